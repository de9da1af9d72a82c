"""Shared fixtures: CIFAR-10 files in the official layouts, written by the tests.

``official_cifar`` writes a small random data set in both official layouts,
exactly as the official tarballs hold them (pickled dicts of plane-ordered
rows; 3073-byte binary records). ``real_cifar`` builds a class-balanced subset
of the real images from ``../shared`` when it exists, and skips otherwise.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Some tests import TensorFlow in this process (tfds). Triton imported after it
# crashes the process, and torch imports Triton lazily, so it comes first here.
with contextlib.suppress(ImportError):
    import triton  # noqa: F401

from tests import trax_checks

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
MAKE_CIFAR10 = SHARED / "tools" / "make_cifar10.py"


@dataclass
class CifarFiles:
    root: Path
    train_images: np.ndarray  # NHWC uint8, in file order
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def py_dir(self) -> Path:
        return self.root / "cifar-10-batches-py"

    @property
    def bin_dir(self) -> Path:
        return self.root / "cifar-10-batches-bin"


def _planes(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_official(root: Path, train: tuple, test: tuple, batches: int = 5) -> CifarFiles:
    """Write both official layouts of the given (images, labels) splits."""
    py, binary = root / "cifar-10-batches-py", root / "cifar-10-batches-bin"
    py.mkdir(parents=True)
    binary.mkdir(parents=True)
    parts = list(
        zip(np.array_split(train[0], batches), np.array_split(train[1], batches), strict=True)
    )
    files = [(f"data_batch_{i + 1}", part) for i, part in enumerate(parts)] + [("test_batch", test)]
    for name, (images, labels) in files:
        record = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in labels],
            b"data": _planes(images),
        }
        (py / name).write_bytes(pickle.dumps(record, protocol=2))
        rows = np.concatenate([labels.astype(np.uint8)[:, None], _planes(images)], axis=1)
        (binary / f"{name}.bin").write_bytes(rows.tobytes())
    (py / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]})
    )
    (binary / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    return CifarFiles(root, train[0], train[1], test[0], test[1])


def random_split(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 10, size=count).astype(np.int32)


@pytest.fixture
def official_cifar(tmp_path) -> CifarFiles:
    rng = np.random.default_rng(7)
    return write_official(tmp_path / "cifar", random_split(rng, 250), random_split(rng, 60))


@pytest.fixture(scope="session")
def real_cifar(tmp_path_factory) -> Path:
    """A 5,000 + 1,000 image class-balanced subset of the real CIFAR-10, when at hand."""
    if not MAKE_CIFAR10.exists():
        pytest.skip(f"real CIFAR-10 not at hand ({MAKE_CIFAR10} missing)")
    out = tmp_path_factory.mktemp("real-cifar10")
    subprocess.run(
        [sys.executable, str(MAKE_CIFAR10), str(out), "--train", "5000", "--test", "1000"],
        check=True,
        capture_output=True,
    )
    return out


# The numpy test backend in child processes, and a small synthetic data set for it.
NUMPY_BACKEND_ENV = {"WRNBENCH_EXTRA_BACKENDS": "tests.numpy_backend:INFO", "PYTHONPATH": str(REPO)}
SMALL_SYNTHETIC = [
    "--dataset",
    "synthetic",
    "--train-size",
    "1000",
    "--test-size",
    "200",
    "--batch-size",
    "50",
]


def wrnbench(
    *args: str, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run the installed command line in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def pytest_collection_finish(session):
    # `import trax` takes a minute: its checks start now, in a process of their
    # own, and run beside the rest of the suite (tests/trax_checks.py).
    if not session.config.option.collectonly:
        trax_checks.start_if_selected(session.items)


def pytest_sessionfinish(session):
    trax_checks.stop()
