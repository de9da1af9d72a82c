"""A test-only backend in plain numpy: a softmax-linear classifier, and ways to fail.

It is not a WRN, so its models are not called ``spec``: ``linear`` trains a
linear classifier on the pixels; ``raise`` crashes at step ``FAIL_AT``, ``nan``
returns a NaN loss there, ``oom`` raises MemoryError there, ``hang``
sleeps there until it is killed and ``exit`` ends the process at once. ``slow`` is ``linear`` with a 20 ms pause per step. It lets the runner, sweeps and reports be
tested in real processes quickly and without a deep-learning framework.
Register it in a child process with
``WRNBENCH_EXTRA_BACKENDS=tests.numpy_backend:INFO``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from harness.backend import Trainer
from harness.config import RunConfig
from harness.registry import BackendInfo
from harness.spec import WRNSpec
from harness.timing import best_time

INFO = BackendInfo(
    "numpy-test",
    "tests.numpy_backend",
    requires=("numpy",),
    extra="dev",
    models=("linear", "slow", "raise", "nan", "oom", "hang", "exit"),
    # They stand in for the spec's network in the harness's tests.
    spec_flops_models=("linear", "slow", "raise", "nan", "oom", "hang", "exit"),
    precisions=("fp32",),
    devices=("cpu",),
)
FAIL_AT = 3
SLOW_STEP_S = 0.02
FEATURES = 32 * 32 * 3


def create_trainer(config: RunConfig) -> LinearTrainer:
    return LinearTrainer(config)


def count_params(spec: WRNSpec, model: str = "linear") -> int:
    return (FEATURES + 1) * spec.num_classes


def versions() -> dict[str, str]:
    return {"numpy": np.__version__}


class LinearTrainer(Trainer):
    def __init__(self, config: RunConfig):
        self.config = config
        rng = np.random.default_rng(config.seed)
        self.weights = rng.normal(0, 0.01, size=(FEATURES, config.spec.num_classes)).astype(
            np.float32
        )
        self.bias = np.zeros(config.spec.num_classes, np.float32)
        self.steps = 0

    def _logits(self, images: np.ndarray) -> np.ndarray:
        x = images.reshape(len(images), -1).astype(np.float32) / 255.0 - 0.5
        return x, x @ self.weights + self.bias

    def param_count(self) -> int:
        return self.weights.size + self.bias.size

    def train_step(self, images, labels, lr):
        self._maybe_fail()
        x, logits = self._logits(images)
        probs = _softmax(logits)
        loss = -np.log(probs[np.arange(len(labels)), labels] + 1e-12).mean()
        probs[np.arange(len(labels)), labels] -= 1.0
        self.weights -= lr * (x.T @ probs) / len(labels)
        self.bias -= lr * probs.mean(axis=0)
        self.steps += 1
        return float("nan") if self.config.model == "nan" and self.steps > FAIL_AT else float(loss)

    def _maybe_fail(self) -> None:
        if self.config.model == "slow":
            time.sleep(SLOW_STEP_S)
        if self.steps < FAIL_AT:
            return
        if self.config.model == "raise":
            raise RuntimeError("numpy-test backend failing on purpose")
        if self.config.model == "oom":
            raise MemoryError("numpy-test backend pretending to run out of memory")
        if self.config.model == "hang":
            time.sleep(3600)
        if self.config.model == "exit":
            os._exit(3)  # the process dies without a row, as a segfault would

    def eval_step(self, images, labels, bn="running"):
        _, logits = self._logits(images)
        probs = _softmax(logits)
        loss = -np.log(probs[np.arange(len(labels)), labels] + 1e-12).sum()
        return float(loss), int((logits.argmax(axis=1) == labels).sum())

    def infer_step(self, images):
        return self._logits(images)[1]

    def matmul_flops(self):
        a = np.ones((512, 512), np.float32)
        return 2 * 512**3 / best_time(lambda: a @ a, self.sync)

    def sync(self):
        pass

    def device_name(self):
        return "cpu"


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
