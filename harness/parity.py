"""Do the backends compute the same network? The same weights in, the same numbers out.

Every backend gets the same weights (:func:`harness.weights.init_weights` with
random batch-norm scale, bias and running statistics and a random dense bias,
so that none of them can agree by doing nothing) and the same uint8 batch, in
fp32 on the CPU. Each is compared with the first backend on:

(a) evaluation: the logits of ``infer_step``, with running batch-norm
    statistics and the spec's dropout rate (evaluation must switch it off);
(b) one training step: SGD with Nesterov momentum and weight decay at lr 0.1,
    dropout 0 (two frameworks cannot draw the same dropout masks): the loss,
    and the change the step made to every parameter and running statistic.

A tensor agrees when ``max |a - b| <= atol + rtol * max |b|`` (b: the first
backend's values), judged against the tensor's scale rather than element by
element, as near-zero elements carry no relative precision. A step's change is
also allowed one unit in the last place of the updated tensor
(2^-23 x max |tensor|): each backend rounds its new weights to fp32 on its own.

rtol = 1e-4 for everything that depends smoothly on rounding: the evaluation
logits, the loss, the running statistics and the dense layer's step.
fp32 rounds each operation to a relative u = 6e-8. A 3x3 convolution sums
K = 9 x c_in products (up to 2,304 in WRN-16-4), which two libraries add in
different orders: their sums differ by about u x sqrt(K) = 3e-6. Batch norm
renormalises after every convolution, so such differences add over the ~50
convolutions of a forward and backward pass of WRN-16 rather than compound:
about 3e-6 x sqrt(50) = 2e-5, and 1e-4 leaves a factor of 5.

The step's changes of the convolution kernels and the batch-norm scales and
biases get rtol = 3 / sqrt(N) (0.13 at batch 8, 0.066 at batch 32), N = batch
x 8 x 8, the fewest values a batch norm sums over. Their gradients pass back
through ReLUs and through batch norm in training mode, and no fp32 tolerance
holds there: a ReLU input within rounding of zero (about one in a million)
falls on different sides of the kink in two implementations, and drops one of
the N terms of a gradient sum that batch norm's centring has cancelled down to
about sqrt(N) terms' worth, moving it by ~1/sqrt(N): 4 % at batch 8. Measured
over 24 seeds and batches (8, 32) of WRN-10-1 to WRN-16-2: torch against jax
exceeded 1e-4 in 12 and reached 2.8e-2; torch in fp32 is as far (up to 2.2e-2)
from torch in float64 in such cases, so this is fp32's limit, not a backend's.

Measured at the defaults, torch against jax on a CPU: at most 0.018 of the
allowance in the first group and 0.42 in the second over those 24 cases;
WRN-10-2 and WRN-16-4 (seed 0, batch 8) reach 0.013 and 0.014 (running
variance) and 0.001 (batch-norm scale). Deliberate bugs in the jax backend
fail, in times the allowance (WRN-10-1, batch 8): batch-norm epsilon 1e-3
instead of 1e-5, 33 (logits); 1e-4, 3.0 (logits); running-statistics momentum
0.9 (flax's weight of the old value passed as torch's weight of the batch),
80,000; 0.11, 1,000; the biased batch variance in the running variance, 32; no
gradient through the batch statistics, 32 (second group); plain instead of
Nesterov momentum, 4,700; momentum 0.99, 470; no weight decay, 24. The biased
variance differs by a factor n / (n - 1), n = batch x height x width, which is
why the default batch is small.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from harness import registry
from harness.config import ConfigError, RunConfig
from harness.data import synthetic
from harness.spec import WRNSpec
from harness.weights import init_weights

log = logging.getLogger(__name__)

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 0.0
KINK_FACTOR = 3.0
DEFAULT_BATCH = 8
FP32_EPS = float(np.finfo(np.float32).eps)  # 2^-23: one unit in the last place, relative
PARITY_LR = 0.1

# How the rows of the table group the canonical tensors, by their last name part.
_KINDS = {
    "kernel": "step: conv kernels",
    "scale": "step: BN scale",
    "bias": "step: BN bias",
    "mean": "step: BN running mean",
    "var": "step: BN running var",
}
# Steps whose gradients pass back through ReLU kinks and batch norm in training mode.
_KINKED = ("step: conv kernels", "step: BN scale", "step: BN bias")


def default_kink_rtol(spec: WRNSpec, batch_size: int) -> float:
    """KINK_FACTOR / sqrt(N), N = batch x last map area: the fewest values a batch norm sums."""
    area = spec.blocks[-1].out_size ** 2
    return KINK_FACTOR / math.sqrt(batch_size * area)


@dataclass(frozen=True)
class Tolerance:
    """``rtol`` where results depend smoothly on rounding, ``kink_rtol`` for _KINKED steps."""

    kink_rtol: float
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL

    def rtol_of(self, quantity: str) -> float:
        return self.kink_rtol if quantity in _KINKED else self.rtol


@dataclass(frozen=True)
class Outputs:
    """What one backend computed from the shared weights and batch."""

    logits: np.ndarray  # (images, classes), evaluation mode
    train_loss: float
    after_step: dict[str, np.ndarray]  # every canonical tensor after the step


@dataclass(frozen=True)
class Difference:
    """The largest disagreement within one quantity, over all its tensors."""

    quantity: str
    tensors: int
    max_abs: float
    max_rel: float  # max |a - b| / max |b|, over the tensors
    rtol: float
    of_allowed: float  # max |a - b| / its allowance, over the tensors; above 1 fails
    worst: str  # the tensor closest to (or furthest beyond) its allowance

    @property
    def passed(self) -> bool:
        return self.of_allowed <= 1.0


@dataclass
class ParityReport:
    spec: WRNSpec
    backends: list[str]
    batch_size: int
    seed: int
    tolerance: Tolerance
    differences: dict[str, list[Difference]] = field(default_factory=dict)  # by backend

    @property
    def passed(self) -> bool:
        return all(d.passed for rows in self.differences.values() for d in rows)

    def table(self) -> str:
        reference, tol = self.backends[0], self.tolerance
        lines = [
            f"parity of {self.spec.name} (eval dropout {self.spec.dropout:g}), fp32 on the CPU: "
            f"weights from seed {self.seed}, batch {self.batch_size}, SGD lr {PARITY_LR:g}",
            f"agrees when max|a - b| <= {tol.atol:g} + rtol x max|{reference}| per tensor "
            "(+ 1 ulp of a stepped tensor); see wrnbench parity --help",
        ]
        header = (
            f"{'quantity':<24} {'tensors':>7} {'max abs diff':>12} {'max rel diff':>12} "
            f"{'rtol':>8} {'of allowed':>10}  {'':<4}  worst tensor"
        )
        for name, rows in self.differences.items():
            lines += ["", f"{name} vs {reference}", header]
            for d in rows:
                verdict = "ok" if d.passed else "FAIL"
                lines.append(
                    f"{d.quantity:<24} {d.tensors:>7} {d.max_abs:>12.2e} {d.max_rel:>12.2e} "
                    f"{d.rtol:>8.1e} {d.of_allowed:>10.2g}  {verdict:<4}  {d.worst}"
                )
        lines += ["", "parity: " + ("ok" if self.passed else "FAILED, above the tolerance")]
        return "\n".join(lines)


def run_parity(
    backends: list[str],
    spec: WRNSpec,
    batch_size: int = DEFAULT_BATCH,
    seed: int = 0,
    tolerance: Tolerance | None = None,
) -> ParityReport:
    """Compare every backend with the first on the same weights and batch."""
    if len(backends) < 2:
        raise ConfigError([f"parity compares two or more backends; got {backends}"])
    tolerance = tolerance or Tolerance(default_kink_rtol(spec, batch_size))
    weights = init_weights(spec, seed, nontrivial=True)
    batch = synthetic(batch_size, 1).train

    outputs = {}
    for name in backends:
        log.info("parity: running %s", name)
        outputs[name] = backend_outputs(name, spec, weights, batch.images, batch.labels, seed)

    report = ParityReport(spec, list(backends), batch_size, seed, tolerance)
    reference = outputs[backends[0]]
    for name in backends[1:]:
        report.differences[name] = compare(outputs[name], reference, weights, tolerance)
    return report


def backend_outputs(
    name: str, spec: WRNSpec, weights: dict, images: np.ndarray, labels: np.ndarray, seed: int
) -> Outputs:
    """One backend's evaluation logits and one SGD step, both from ``weights``."""
    module = registry.load(name)
    train_config = RunConfig(
        backend=name,
        depth=spec.depth,
        width=spec.width,
        dropout=0.0,
        optimizer="sgd",
        lr=PARITY_LR,
        batch_size=len(labels),
        seed=seed,
        precision="fp32",
        device="cpu",
    )
    eval_config = train_config.replace(dropout=spec.dropout)

    trainer = module.create_trainer(eval_config)
    trainer.import_weights(weights)
    logits = np.asarray(trainer.infer_step(images), dtype=np.float64)
    if eval_config != train_config:
        trainer.close()
        trainer = module.create_trainer(train_config)
        trainer.import_weights(weights)

    loss = trainer.train_step(images, labels, PARITY_LR)
    trainer.sync()
    train_loss = trainer.to_float(loss)
    after = trainer.export_weights()
    trainer.close()
    return Outputs(logits, train_loss, after)


def compare(
    outputs: Outputs, reference: Outputs, before: dict[str, np.ndarray], tolerance: Tolerance
) -> list[Difference]:
    """Rows of differences of ``outputs`` from ``reference``; ``before`` are the shared weights."""
    images, classes = reference.logits.shape
    loss, ref_loss = np.float64(outputs.train_loss), np.float64(reference.train_loss)
    rows = [
        _difference(
            "eval logits",
            [(f"{images} images x {classes} classes", outputs.logits, reference.logits, 0.0)],
            tolerance,
        ),
        _difference("train loss", [("mean cross-entropy", loss, ref_loss, 0.0)], tolerance),
    ]

    groups: dict[str, list] = {}
    for name, start in before.items():
        start = start.astype(np.float64)
        change = outputs.after_step[name].astype(np.float64) - start
        ref_change = reference.after_step[name].astype(np.float64) - start
        # Each backend rounds its updated tensor to fp32 on its own, which no
        # implementation can avoid: allow one unit in the last place of it.
        rounding = FP32_EPS * float(np.max(np.abs(reference.after_step[name])))
        groups.setdefault(_kind(name), []).append((name, change, ref_change, rounding))
    rows += [_difference(kind, entries, tolerance) for kind, entries in groups.items()]
    return rows


def _kind(name: str) -> str:
    if name.startswith("head.dense."):
        return f"step: dense {name.rpartition('.')[2]}"
    return _KINDS[name.rpartition(".")[2]]


def _difference(quantity: str, entries: list[tuple], tolerance: Tolerance) -> Difference:
    """The worst of (name, value, reference, rounding allowance) entries of one quantity."""
    rtol = tolerance.rtol_of(quantity)
    max_abs, max_rel, of_allowed, worst = 0.0, 0.0, 0.0, ""
    for name, value, ref, rounding in entries:
        abs_diff = float(np.max(np.abs(value - ref)))
        scale = float(np.max(np.abs(ref)))
        max_abs = max(max_abs, abs_diff)
        max_rel = max(max_rel, _ratio(abs_diff, scale))
        ratio = _ratio(abs_diff, tolerance.atol + rtol * scale + rounding)
        if ratio >= of_allowed:
            of_allowed, worst = ratio, name
    return Difference(quantity, len(entries), max_abs, max_rel, rtol, of_allowed, worst)


def _ratio(difference: float, scale: float) -> float:
    if scale > 0:
        return difference / scale
    return 0.0 if difference == 0 else float("inf")
