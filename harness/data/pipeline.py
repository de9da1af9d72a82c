"""One seeded batch pipeline for every backend.

Batch ``i`` of a run depends only on (seed, i): the epoch's permutation comes
from (seed, epoch) and the batch's augmentation from (seed, epoch, index), so
every backend sees the same images in the same order, whichever thread made
them and wherever a run resumes. Batches are made ahead in a background
thread; numpy releases the GIL for the copies that dominate.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from harness.data.dataset import DataError, Split

PAD = 4
SIZE = 32


@dataclass(frozen=True)
class Batch:
    images: np.ndarray  # (B, 32, 32, 3) uint8
    labels: np.ndarray  # (B,) int32
    step: int
    epoch: int


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 32x32 crops of the 4-pixel reflection-padded images, half of them flipped.

    One fancy-indexing gather does crop and flip for the whole batch.
    """
    count = len(images)
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
    top = rng.integers(0, 2 * PAD + 1, size=count)
    left = rng.integers(0, 2 * PAD + 1, size=count)
    flip = rng.random(count) < 0.5
    offsets = np.arange(SIZE)
    rows = top[:, None] + offsets
    cols = np.where(flip[:, None], left[:, None] + SIZE - 1 - offsets, left[:, None] + offsets)
    return padded[np.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]


class TrainBatches:
    """Shuffled, optionally augmented training batches for steps [start, stop).

    The last incomplete batch of an epoch is dropped, so every batch has the
    same shape. Iterate once; ``wait_s`` is the time the consumer spent
    waiting for a batch that was not ready.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        seed: int,
        augment: bool,
        stop: int,
        start: int = 0,
        prefetch: int = 4,
    ):
        if batch_size > len(split):
            raise DataError(
                f"batch size {batch_size} is larger than the {len(split)} training images"
            )
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.start, self.stop = start, stop
        self.per_epoch = len(split) // batch_size
        self.wait_s = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._cached: tuple[int, np.ndarray] | None = None

    def make(self, step: int) -> Batch:
        """Batch ``step`` of the run; a pure function of (seed, step)."""
        epoch, index = divmod(step, self.per_epoch)
        chosen = self._permutation(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        images = self.split.images[chosen]
        if self.augment:
            images = augment(images, np.random.default_rng([self.seed, epoch, index, 1]))
        return Batch(images, self.split.labels[chosen], step, epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        cached = self._cached  # one tuple, swapped atomically
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.split)))
            self._cached = cached
        return cached[1]

    def _produce(self) -> None:
        try:
            for step in range(self.start, self.stop):
                if self._stopping.is_set():
                    return
                self._put(self.make(step))
        except BaseException as err:  # handed to the consumer, raised there
            self._put(err)
            return
        self._put(None)

    def _put(self, item) -> None:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[Batch]:
        self._thread = threading.Thread(target=self._produce, name="wrnbench-batches", daemon=True)
        self._thread.start()
        try:
            while True:
                began = time.perf_counter()
                item = self._queue.get()
                self.wait_s += time.perf_counter() - began
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The whole split in order; the last batch may be smaller."""
    for begin in range(0, len(split), batch_size):
        yield split.images[begin : begin + batch_size], split.labels[begin : begin + batch_size]
