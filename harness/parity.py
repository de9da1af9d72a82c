"""Do the backends compute the same network? The same weights in, the same numbers out.

Every backend gets the same weights (:func:`harness.weights.init_weights` with
random batch-norm scale, bias and running statistics and a random dense bias,
so that none of them can agree by doing nothing) and the same uint8 batch, in
fp32 on the CPU. Each is compared with the first backend on:

(a) evaluation: the log-probabilities of every image and class, with running
    batch-norm statistics and the spec's dropout rate (evaluation must switch
    dropout off). The Trainer contract yields no logits, so they are read from
    ``eval_step``: the loss of one image under label c is -log p(c). That fixes
    the logits up to a constant per image, the part softmax ignores.
(b) one training step: SGD with Nesterov momentum and weight decay at lr 0.1,
    dropout 0 (two frameworks cannot draw the same dropout masks): the loss,
    and the change the step made to every parameter and running statistic.

A tensor agrees when ``max |a - b| <= atol + rtol * max |b|`` (b: the first
backend's values), judged against the tensor's scale rather than element by
element, as near-zero elements carry no relative precision. A step's change is
also allowed one unit in the last place of the updated tensor
(2^-23 x max |tensor|): each backend rounds its new weights to fp32 on its own.

The default rtol, 1e-4, is fp32 arithmetic's reach. Each operation rounds to
a relative u = 6e-8. A 3x3 convolution sums K = 9 x c_in products (up to
2,304 in WRN-16-4), which two libraries add in different orders: their sums
differ by about u x sqrt(K) = 3e-6. Batch norm renormalises after every
convolution, so these differences add over the ~50 convolutions a forward and
backward pass of WRN-16 goes through rather than compound, roughly as a
random walk: 3e-6 x sqrt(50) = 2e-5. 1e-4 leaves a factor of 5 above that.
Measured on a CPU, torch against jax, batch 8: WRN-10-2 reaches 0.23 and
WRN-16-4 0.37 of its allowance (the step's changes of the batch-norm scales,
where rounding dominates); evaluation log-probabilities differ by 3e-7 of their
scale. Real bugs exceed it by far: batch-norm epsilon 1e-3 or 1e-4 instead of
1e-5 reaches 560 times the allowance; running-statistics momentum 0.11 instead
of 0.1, 1,000 times; 0.9 (the weight of the old value, as flax counts it,
passed as torch's weight of the batch) 80,000 times; the biased instead of the
unbiased batch variance in the running variance, 27 times. The last is a
factor n / (n - 1), n = batch x height x width, which is why the default
batch is small.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from harness import registry
from harness.backend import Trainer
from harness.config import ConfigError, RunConfig
from harness.data import synthetic
from harness.spec import WRNSpec
from harness.weights import init_weights

log = logging.getLogger(__name__)

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 0.0
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


@dataclass(frozen=True)
class Tolerance:
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL

    def allowance(self, scale: float, rounding: float = 0.0) -> float:
        """The largest difference allowed in a tensor of this scale."""
        return self.atol + self.rtol * scale + rounding


@dataclass(frozen=True)
class Outputs:
    """What one backend computed from the shared weights and batch."""

    log_probs: np.ndarray  # (images, classes), evaluation mode
    train_loss: float
    after_step: dict[str, np.ndarray]  # every canonical tensor after the step


@dataclass(frozen=True)
class Difference:
    """The largest disagreement within one quantity, over all its tensors."""

    quantity: str
    tensors: int
    max_abs: float
    max_rel: float  # max |a - b| / max |b|, over the tensors
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
            f"agrees when max|a - b| <= {tol.atol:g} + {tol.rtol:g} x max|{reference}| per tensor",
        ]
        header = (
            f"{'quantity':<24} {'tensors':>7} {'max abs diff':>12} {'max rel diff':>12} "
            f"{'of allowed':>10}  {'':<4}  worst tensor"
        )
        for name, rows in self.differences.items():
            lines += ["", f"{name} vs {reference}", header]
            for d in rows:
                verdict = "ok" if d.passed else "FAIL"
                lines.append(
                    f"{d.quantity:<24} {d.tensors:>7} {d.max_abs:>12.2e} {d.max_rel:>12.2e} "
                    f"{d.of_allowed:>10.3f}  {verdict:<4}  {d.worst}"
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
    tolerance = tolerance or Tolerance()
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
    module = registry.load(name)
    train_config = RunConfig(
        backend=name,
        depth=spec.depth,
        width=spec.width,
        dropout=0.0,
        optimizer="sgd",
        lr=PARITY_LR,
        batch_size=len(labels),
        eval_batch_size=1,  # log_probabilities evaluates one image at a time
        seed=seed,
        precision="fp32",
        device="cpu",
    )
    eval_config = train_config.replace(dropout=spec.dropout)

    trainer = module.create_trainer(eval_config)
    trainer.import_weights(weights)
    log_probs = log_probabilities(trainer, images, spec.num_classes)
    if eval_config != train_config:
        trainer.close()
        trainer = module.create_trainer(train_config)
        trainer.import_weights(weights)

    loss = trainer.train_step(images, labels, PARITY_LR)
    trainer.sync()
    train_loss = trainer.to_float(loss)
    after = trainer.export_weights()
    trainer.close()
    return Outputs(log_probs, train_loss, after)


def log_probabilities(trainer: Trainer, images: np.ndarray, num_classes: int) -> np.ndarray:
    """log p(class | image) in evaluation mode, from per-image, per-label eval losses."""
    out = np.empty((len(images), num_classes))
    for i in range(len(images)):
        for c in range(num_classes):
            loss, _ = trainer.eval_step(images[i : i + 1], np.array([c], dtype=np.int32))
            out[i, c] = -loss
    return out


def compare(
    outputs: Outputs, reference: Outputs, before: dict[str, np.ndarray], tolerance: Tolerance
) -> list[Difference]:
    """Rows of differences of ``outputs`` from ``reference``; ``before`` are the shared weights."""
    images, classes = reference.log_probs.shape
    loss, ref_loss = np.float64(outputs.train_loss), np.float64(reference.train_loss)
    rows = [
        _difference(
            "eval log-probabilities",
            [(f"{images} images x {classes} classes", outputs.log_probs, reference.log_probs, 0.0)],
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
    max_abs, max_rel, of_allowed, worst = 0.0, 0.0, 0.0, ""
    for name, value, ref, rounding in entries:
        abs_diff = float(np.max(np.abs(value - ref)))
        scale = float(np.max(np.abs(ref)))
        max_abs = max(max_abs, abs_diff)
        max_rel = max(max_rel, _ratio(abs_diff, scale))
        ratio = _ratio(abs_diff, tolerance.allowance(scale, rounding))
        if ratio >= of_allowed:
            of_allowed, worst = ratio, name
    return Difference(quantity, len(entries), max_abs, max_rel, of_allowed, worst)


def _ratio(difference: float, scale: float) -> float:
    if scale > 0:
        return difference / scale
    return 0.0 if difference == 0 else float("inf")
