"""The data sources a run can name with ``--dataset``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.cifar10 import load_cifar10
from harness.data.dataset import DataError, Dataset, Split

SYNTHETIC_TRAIN = 50_000
SYNTHETIC_TEST = 10_000
SYNTHETIC_SEED = 20160523  # fixed: every run sees the same synthetic images


def load_dataset(
    name: str,
    data_dir: str | Path | None,
    train_size: int | None = None,
    test_size: int | None = None,
) -> Dataset:
    """A source's splits, cut to their first train_size and test_size images when given."""
    if name == "cifar10":
        if data_dir is None:
            raise DataError(
                "dataset cifar10 needs --data-dir, the folder holding cifar-10-batches-py/ or -bin/"
            )
        dataset = load_cifar10(data_dir)
    elif name == "tfds":
        dataset = load_tfds(data_dir)
    elif name == "synthetic":
        dataset = synthetic(train_size or SYNTHETIC_TRAIN, test_size or SYNTHETIC_TEST)
    else:
        raise DataError(f"unknown dataset {name!r}; known: cifar10, tfds, synthetic")
    return dataset.limited(train_size, test_size)


def synthetic(train_size: int = SYNTHETIC_TRAIN, test_size: int = SYNTHETIC_TEST) -> Dataset:
    """Deterministic random images for speed runs, with a weak class signal.

    Each class has a coarse colour pattern that is blended with uniform noise,
    so that a model can learn something and a training loop can be checked for
    progress without the real files; no accuracy on it means anything.
    """
    rng = np.random.default_rng(SYNTHETIC_SEED)
    patterns = (
        rng.integers(0, 256, size=(10, 4, 4, 3), dtype=np.uint8).repeat(8, axis=1).repeat(8, axis=2)
    )

    def split(count: int) -> Split:
        labels = rng.integers(0, 10, size=count).astype(np.int32)
        noise = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
        images = patterns[labels] // 2 + noise // 2  # stays uint8: at most 127 + 127
        return Split(images, labels)

    return Dataset(
        split(train_size), split(test_size), "synthetic", f"synthetic(seed={SYNTHETIC_SEED})"
    )


def load_tfds(data_dir: str | Path | None) -> Dataset:
    """tensorflow-datasets' ``cifar10``, prepared beforehand in data_dir; never downloads."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            "dataset tfds needs tensorflow-datasets: pip install -e '.[tfds]'"
        ) from None
    try:
        splits = tfds.load(
            "cifar10",
            split=["train", "test"],
            data_dir=None if data_dir is None else str(data_dir),
            download=False,
            as_supervised=True,
        )
        # Batches of a few thousand rather than batch_size=-1, which some tfds
        # versions cannot do for data sets of unknown length.
        train, test = (_tfds_arrays(tfds.as_numpy(split.batch(4096))) for split in splits)
    except (AssertionError, FileNotFoundError, ValueError) as err:
        where = data_dir or "tensorflow-datasets' default data dir"
        raise DataError(
            f"{where}: no prepared tfds cifar10 ({err}); prepare it with "
            "`tfds build cifar10 --data_dir DIR` on a machine with network access"
        ) from None
    return Dataset(_tfds_split(train), _tfds_split(test), "tfds", str(data_dir))


def _tfds_arrays(batches) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*batches, strict=True)
    return np.concatenate(images), np.concatenate(labels)


def _tfds_split(pair) -> Split:
    images, labels = pair
    if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3):
        raise DataError(
            f"tfds cifar10 images must be uint8 32x32x3; got {images.dtype} {images.shape}"
        )
    return Split(images, labels.astype(np.int32))
