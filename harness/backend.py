"""The contract between the harness and a framework backend.

A backend is a module under ``backends/`` that defines ``create_trainer``,
``count_params`` and ``versions`` (see :class:`BackendModule`). The harness
hands it numpy batches (uint8 NHWC images, int labels) and a learning rate per
step; it never touches framework tensors. Every backend implements the same
verbs, so that the runner, the benchmarks and the parity check drive each one
the same way.
"""

from __future__ import annotations

import abc
from typing import Any, Protocol

import numpy as np

from harness.config import RunConfig
from harness.spec import WRNSpec


class DeviceUnavailable(RuntimeError):
    """The device a configuration asks for is not on this machine."""


class Trainer(abc.ABC):
    """One backend's model, optimizer state and compiled steps for one run.

    ``train_step`` may return before the device has finished (asynchronous
    dispatch); the runner calls :meth:`sync` before it reads a clock and only
    then turns the returned loss into a float with :meth:`to_float`.
    """

    config: RunConfig
    compile_method: str = "first_step"  # what compile_time_s measured; see results/README.md

    @abc.abstractmethod
    def param_count(self) -> int:
        """Trainable parameters of the model the backend built."""

    @abc.abstractmethod
    def train_step(self, images: np.ndarray, labels: np.ndarray, lr: float) -> Any:
        """One optimizer step on a batch; returns the batch's mean loss as a device value."""

    @abc.abstractmethod
    def eval_step(
        self, images: np.ndarray, labels: np.ndarray, bn: str = "running"
    ) -> tuple[float, int]:
        """Summed cross-entropy and number of correct predictions on a batch.

        ``bn='running'`` normalises with batch norm's running averages (the
        standard); ``bn='batch'`` with the statistics of this batch's own images,
        dropout still off and the running averages left as they are.
        """

    @abc.abstractmethod
    def sync(self) -> None:
        """Wait until all work queued on the device has finished."""

    def to_float(self, value: Any) -> float:
        return float(value)

    def compile(self, images: np.ndarray, labels: np.ndarray) -> float | None:
        """Compile the train step ahead of time; seconds taken, or None if not supported.

        Backends that compile ahead of time override this; the runner then
        reports the compile on its own and the first step as a normal step.
        """
        return None

    def device_batch(self, images: np.ndarray, labels: np.ndarray) -> tuple[Any, Any]:
        """Copy a batch to the device once, for benchmarks.

        ``train_step`` and ``infer_step`` accept the two values returned in
        place of numpy arrays, and then skip the host-to-device copy.
        """
        return images, labels

    def infer_step(self, images: Any) -> Any:
        """Forward pass in evaluation mode; returns the logits as a device value."""
        raise NotImplementedError(f"{type(self).__name__} has no inference step")

    def matmul_flops(self) -> float | None:
        """FLOP/s of large square matrix products in this framework, device and precision.

        Measured on the spot: the peak a network's achieved FLOP/s is compared with.
        """
        return None

    @abc.abstractmethod
    def device_name(self) -> str:
        """The device the steps run on, as the framework names it."""

    def peak_device_memory_bytes(self) -> int | None:
        """Peak memory on the accelerator, or None where the platform cannot tell."""
        return None

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, MemoryError)

    def export_weights(self) -> dict[str, np.ndarray]:
        """Parameters and batch-norm statistics under the spec's canonical names."""
        raise NotImplementedError(f"{type(self).__name__} cannot export weights yet")

    def import_weights(self, weights: dict[str, np.ndarray]) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot import weights yet")

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what the trainer holds (device memory, threads)."""


class BackendModule(Protocol):
    """What the registry expects of a backend module."""

    def create_trainer(self, config: RunConfig) -> Trainer: ...

    def count_params(self, spec: WRNSpec, model: str = "spec") -> int: ...

    def versions(self) -> dict[str, str]: ...
