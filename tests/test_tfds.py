"""The tfds source, on tensorflow-datasets' own mock data (no download, no files)."""

import subprocess
import sys

import numpy as np
import pytest

from harness.data import DataError, load_dataset
from tests.conftest import REPO

tfds = pytest.importorskip("tensorflow_datasets")


def test_tfds_cifar10_arrives_as_the_contracts_uint8_batches(tmp_path):
    with tfds.testing.mock_data(num_examples=40):
        data = load_dataset("tfds", tmp_path)
    assert data.source == "tfds"
    assert data.train.images.shape == (40, 32, 32, 3) and data.train.images.dtype == np.uint8
    assert data.test.labels.dtype == np.int32 and set(data.test.labels) <= set(range(10))


def test_missing_tfds_data_is_a_clear_error_and_nothing_is_downloaded(tmp_path):
    with pytest.raises(DataError, match="no prepared tfds cifar10 .*tfds build cifar10"):
        load_dataset("tfds", tmp_path / "empty")
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]


def test_a_torch_run_on_tfds_data_records_its_source(tmp_path):
    """In a fresh process: TensorFlow imported before Triton (torch's) would crash it."""
    pytest.importorskip("torch")
    script = (
        "import tensorflow_datasets as tfds\n"
        "from harness import runner\n"
        "from harness.config import RunConfig\n"
        "with tfds.testing.mock_data(num_examples=64):\n"
        f"    row = runner.run(RunConfig(dataset='tfds', data_dir={str(tmp_path)!r}, depth=10, width=1,\n"
        "                                batch_size=16, steps=3, eval_every=3, warmup_steps=1), progress=False)\n"
        "print(row['status'], row['data_source'], row['train_images'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "ok tfds 64"
