"""The dataset contract: uint8 NHWC images and int32 labels, framework-free."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# CIFAR-10 train-set channel statistics on the 0..255 scale (the official
# files' figures, as the WRN reference code uses them).
CIFAR10_MEAN = (125.3, 123.0, 113.9)
CIFAR10_STD = (63.0, 62.1, 66.7)
IMAGE_SHAPE = (32, 32, 3)


class DataError(ValueError):
    """Data that is missing or not what the contract expects; names the file."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) int32 in 0..9

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.shape[1:] != IMAGE_SHAPE:
            raise DataError(
                f"images must be uint8 of shape (N, 32, 32, 3); got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise DataError(f"{len(self.images)} images but labels of shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int | None) -> Split:
        """The first ``count`` examples (the official files are already shuffled)."""
        if count is None or count >= len(self):
            return self
        return Split(self.images[:count], self.labels[:count])


@dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    source: str  # e.g. "cifar10:py:official", "cifar10:bin", "tfds", "synthetic"
    location: str  # where it was read from

    def limited(self, train_size: int | None, test_size: int | None) -> Dataset:
        for name, wanted, split in (
            ("train", train_size, self.train),
            ("test", test_size, self.test),
        ):
            if wanted is not None and wanted > len(split):
                raise DataError(
                    f"{name}_size {wanted} is larger than the {len(split)} {name} images in {self.location}"
                )
        return Dataset(
            self.train.head(train_size), self.test.head(test_size), self.source, self.location
        )
