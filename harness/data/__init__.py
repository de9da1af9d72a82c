"""The dataset contract: sources of CIFAR-10 and the one batch pipeline."""

from harness.data.dataset import CIFAR10_MEAN, CIFAR10_STD, DataError, Dataset, Split
from harness.data.pipeline import Batch, TrainBatches, augment, eval_batches
from harness.data.sources import load_dataset, synthetic

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "Batch",
    "DataError",
    "Dataset",
    "Split",
    "TrainBatches",
    "augment",
    "eval_batches",
    "load_dataset",
    "synthetic",
]
