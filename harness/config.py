"""The resolved configuration of one run: typed, validated, hashable.

A run is fully described by a :class:`RunConfig`. Its fields are flat so that
any of them can be a command-line flag, a sweep axis or a result column under
the same name. Defaults are the paper's recipe: SGD with Nesterov momentum 0.9,
weight decay 5e-4, learning rate 0.1 multiplied by 0.2 at 30, 60 and 80 % of the
run (the paper's epochs 60, 120 and 160 of 200), batch 128, crop-and-flip
augmentation and per-channel normalisation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property

from harness.spec import DEPTH_ALLOWED, DROPOUT_ALLOWED, WIDTH_ALLOWED, SpecError, WRNSpec

OPTIMIZERS = ("sgd", "adam")
DATASETS = ("cifar10", "tfds", "synthetic")
PRECISIONS = ("fp32", "bf16")
EVAL_BN_MODES = ("running", "batch", "both")
MODES = ("train", "bench", "bench-infer")
TRAX_MATH = ("jax", "tensorflow-numpy")
DEFAULT_EPOCHS = 200
DEFAULT_EVALS_PER_RUN = 10

# SGD as in the paper and the reference code: coupled L2 decay on every tensor.
SGD_MOMENTUM = 0.9
SGD_WEIGHT_DECAY = 5e-4
SGD_DEFAULT_LR = 0.1
LR_DECAY_FACTOR = 0.2
LR_DECAY_AT = (0.3, 0.6, 0.8)

# Adam as Trax's optimizers.Adam defaults, which the Trax CIFAR-10 tutorial uses:
# bias-corrected moments, eps added to sqrt(v_hat), and a decoupled decay that
# multiplies the weights by (1 - ADAM_WEIGHT_DECAY_RATE) each step.
ADAM_DEFAULT_LR = 0.01
ADAM_B1 = 0.9
ADAM_B2 = 0.999
ADAM_EPS = 1e-5
ADAM_WEIGHT_DECAY_RATE = 1e-5

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
# Fields that say where or how output goes, not what is computed.
_NOT_IDENTITY = ("data_dir",)


class ConfigError(ValueError):
    """One or more invalid settings; ``problems`` lists each with what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run; unset optional fields are resolved."""

    # The network.
    backend: str = field(default="torch", metadata={"help": "framework backend"})
    model: str = field(
        default="spec", metadata={"help": "'spec' (the paper's WRN) or a backend's own model"}
    )
    depth: int = field(default=16, metadata={"help": "depth d = 6n+4", "allowed": DEPTH_ALLOWED})
    width: int = field(default=4, metadata={"help": "widen factor k", "allowed": WIDTH_ALLOWED})
    dropout: float = field(
        default=0.0,
        metadata={
            "help": "dropout rate between the convolutions of a block",
            "allowed": DROPOUT_ALLOWED,
        },
    )
    # Training.
    optimizer: str = field(
        default="sgd", metadata={"help": "sgd (paper recipe) or adam (Trax tutorial)"}
    )
    lr: float | None = field(
        default=None, metadata={"help": "initial learning rate [0.1 for sgd, 0.01 for adam]"}
    )
    batch_size: int = field(default=128, metadata={"help": "training batch size"})
    steps: int | None = field(default=None, metadata={"help": "training steps (or give --epochs)"})
    epochs: float | None = field(
        default=None, metadata={"help": f"training epochs [{DEFAULT_EPOCHS}]"}
    )
    eval_every: int | None = field(
        default=None,
        metadata={"help": f"evaluate every N steps [{DEFAULT_EVALS_PER_RUN} evaluations per run]"},
    )
    eval_batch_size: int = field(default=500, metadata={"help": "evaluation batch size"})
    seed: int = field(
        default=0, metadata={"help": "seed of initialisation, data order, augmentation and dropout"}
    )
    augment: bool = field(
        default=True, metadata={"help": "random crop (4-pixel reflection pad) and horizontal flip"}
    )
    normalize: bool = field(
        default=True, metadata={"help": "normalise by the CIFAR-10 channel mean and std"}
    )
    eval_bn: str = field(
        default="running",
        metadata={
            "help": "batch norm at evaluation: 'running' averages (standard), 'batch' statistics "
            "of each evaluation batch (the Trax tutorial's protocol), or 'both' on the same "
            "weights (the batch figures then go to the *_batch_bn columns)"
        },
    )
    warmup_steps: int = field(
        default=5, metadata={"help": "steps after the first left out of the step-time statistics"}
    )
    # Data.
    dataset: str = field(
        default="cifar10", metadata={"help": "cifar10 (official files), tfds or synthetic"}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "folder holding the data set files"}
    )
    train_size: int | None = field(
        default=None, metadata={"help": "use only the first N training images"}
    )
    test_size: int | None = field(
        default=None, metadata={"help": "use only the first N test images"}
    )
    # Execution.
    device: str = field(default="cpu", metadata={"help": "cpu, cuda or cuda:N"})
    precision: str = field(
        default="fp32", metadata={"help": "fp32, or bf16 (mixed precision, CUDA only)"}
    )
    channels_last: bool = field(default=False, metadata={"help": "torch: NHWC memory format"})
    compile: bool = field(default=False, metadata={"help": "torch: torch.compile the model"})
    trax_math: str | None = field(
        default=None, metadata={"help": "trax: its math backend, jax or tensorflow-numpy [jax]"}
    )
    threads: int | None = field(
        default=None, metadata={"help": "CPU threads for the framework [its default]"}
    )
    # What the run does.
    mode: str = field(
        default="train",
        metadata={
            "help": "train (the full run), bench (train steps on one synthetic batch kept on the "
            "device, no evaluation) or bench-infer (forward passes only)"
        },
    )
    repeat: int = field(
        default=0, metadata={"help": "index of a repeated measurement; changes nothing computed"}
    )

    def __post_init__(self):
        problems = []
        for f in dataclasses.fields(self):
            try:
                value = _coerce(f, getattr(self, f.name))
            except ConfigError as err:
                problems += err.problems
                value = f.default  # so that the other fields can still be checked
            object.__setattr__(self, f.name, value)
        problems += self._check()
        if problems:
            raise ConfigError(problems)

    def _check(self) -> list[str]:
        from harness import registry  # the registry imports no framework

        problems = []
        try:
            self.spec  # noqa: B018 - validates depth, width and dropout
        except SpecError as err:
            problems.append(str(err))
        problems += registry.check_options(self)
        problems += _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        problems += _check_choice("dataset", self.dataset, DATASETS)
        problems += _check_choice("precision", self.precision, PRECISIONS)
        problems += _check_choice("eval_bn", self.eval_bn, EVAL_BN_MODES)
        problems += _check_choice("mode", self.mode, MODES)
        if self.trax_math is not None:
            problems += _check_choice("trax_math", self.trax_math, TRAX_MATH)
        if self.repeat < 0:
            problems.append(f"repeat must be >= 0; got {self.repeat}")
        for name in (
            "batch_size",
            "eval_batch_size",
            "steps",
            "eval_every",
            "train_size",
            "test_size",
            "threads",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be a whole number >= 1; got {value}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0; got {self.warmup_steps}")
        if self.seed < 0:
            problems.append(f"seed must be >= 0; got {self.seed}")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"lr must be > 0; got {self.lr}")
        if self.epochs is not None and not self.epochs > 0:
            problems.append(f"epochs must be > 0; got {self.epochs}")
        if self.steps is not None and self.epochs is not None:
            problems.append("give steps or epochs, not both")
        if not _DEVICE.match(self.device):
            problems.append(f"device must be cpu, cuda or cuda:N; got {self.device!r}")
        if self.precision == "bf16" and not self.device.startswith("cuda"):
            problems.append("precision bf16 needs a CUDA device; on the CPU use fp32")
        return problems

    @cached_property
    def spec(self) -> WRNSpec:
        return WRNSpec(self.depth, self.width, self.dropout)

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return SGD_DEFAULT_LR if self.optimizer == "sgd" else ADAM_DEFAULT_LR

    def total_steps(self, train_images: int) -> int:
        """Steps of the run: given, or epochs over a train set of this size."""
        if self.steps is not None:
            return self.steps
        per_epoch = max(1, train_images // self.batch_size)
        return max(1, round((self.epochs or DEFAULT_EPOCHS) * per_epoch))

    def eval_interval(self, total_steps: int) -> int:
        if self.eval_every is not None:
            return self.eval_every
        return max(1, total_steps // DEFAULT_EVALS_PER_RUN)

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate of step ``step`` (0-based), the same for every backend."""
        if self.optimizer == "adam":
            return self.base_lr
        decays = sum(step >= int(frac * total_steps) for frac in LR_DECAY_AT)
        return self.base_lr * LR_DECAY_FACTOR**decays

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def identity(self) -> dict:
        """The fields that determine what a run computes, with defaults resolved."""
        out = {k: v for k, v in self.to_dict().items() if k not in _NOT_IDENTITY}
        out["lr"] = self.base_lr
        # Only trax has a math backend; other rows keep the hashes they had before it.
        out.pop("trax_math")
        if self.backend == "trax":
            out["trax_math"] = self.trax_math or "jax"
        return out

    @property
    def config_hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        """Build from names and values (strings allowed), refusing unknown names."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                [f"unknown setting {name!r}; known: {', '.join(sorted(known))}" for name in unknown]
            )
        return cls(**values)


def field_types() -> dict[str, type]:
    """Each field's base type: int, float, bool or str."""
    hints = {"int": int, "float": float, "bool": bool, "str": str}
    return {f.name: hints[str(f.type).split(" ")[0]] for f in dataclasses.fields(RunConfig)}


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    if value in allowed:
        return []
    return [f"{name} must be one of {', '.join(allowed)}; got {value!r}"]


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _coerce(f: dataclasses.Field, value):
    """Turn a string or number into the field's type, or say what is allowed."""
    kind = field_types()[f.name]
    optional = "None" in str(f.type)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "")):
        if optional:
            return None
        raise ConfigError([f"{f.name} must be set"])
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        allowed = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}[
            kind
        ]
        allowed = f.metadata.get("allowed", allowed)
        raise ConfigError([f"{f.name} must be {allowed}; got {value!r}"]) from None
