"""The tfds source, on tensorflow-datasets' own mock data (no download, no files)."""

import numpy as np
import pytest

from harness import runner
from harness.config import RunConfig
from harness.data import DataError, load_dataset

tfds = pytest.importorskip("tensorflow_datasets")


def test_tfds_cifar10_arrives_as_the_contracts_uint8_batches(tmp_path):
    with tfds.testing.mock_data(num_examples=40):
        data = load_dataset("tfds", tmp_path)
    assert data.source == "tfds"
    assert data.train.images.shape == (40, 32, 32, 3) and data.train.images.dtype == np.uint8
    assert data.test.labels.dtype == np.int32 and set(data.test.labels) <= set(range(10))


def test_a_run_on_tfds_data_records_its_source(tmp_path):
    pytest.importorskip("torch")
    config = RunConfig(
        dataset="tfds",
        data_dir=str(tmp_path),
        depth=10,
        width=1,
        batch_size=16,
        steps=4,
        eval_every=4,
        warmup_steps=1,
    )
    with tfds.testing.mock_data(num_examples=64):
        row = runner.run(config, progress=False)
    assert row["status"] == "ok", row["error"]
    assert row["data_source"] == "tfds" and row["train_images"] == 64


def test_missing_tfds_data_is_a_clear_error_and_nothing_is_downloaded(tmp_path):
    with pytest.raises(DataError, match="no prepared tfds cifar10 .* tfds build cifar10"):
        load_dataset("tfds", tmp_path / "empty")
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]
