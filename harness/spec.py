"""The Wide Residual Network as data: what every backend must build.

The spec follows Zagoruyko & Komodakis (2016) and the authors' reference code:

* a 3x3 convolution to 16 channels;
* three groups of n = (depth - 4) / 6 pre-activation blocks with 16k, 32k and
  64k channels at 32x32, 16x16 and 8x8; the first block of groups 2 and 3 has
  stride 2;
* each block is BN-ReLU-conv3x3, BN-ReLU-[dropout]-conv3x3, plus a shortcut: the
  identity where the channel count does not change, otherwise a 1x1 convolution
  with the block's stride applied to the block's BN-ReLU'd input;
* no convolution has a bias; the head is BN-ReLU, 8x8 average pooling and a
  dense layer with bias.

Parameters carry framework-neutral canonical names and layouts (convolution
kernels HWIO, dense kernels (in, out)), so that weights can move between
backends. Nothing here imports a deep-learning framework.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

BN_MOMENTUM = 0.1  # running = (1 - momentum) * running + momentum * batch
BN_EPSILON = 1e-5
STEM_CHANNELS = 16
GROUP_BASE_CHANNELS = (16, 32, 64)
POOL_SIZE = 8

# Initialisers, by name, as every backend must implement them.
HE_NORMAL = "he_normal"  # normal(0, sqrt(2 / fan_in)), fan_in = kh * kw * c_in
UNIFORM_FAN_IN = "uniform_fan_in"  # uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
ZEROS = "zeros"
ONES = "ones"


class SpecError(ValueError):
    """A spec or setting that is not allowed; the message says what is."""


@dataclass(frozen=True)
class Param:
    """One tensor of the model under its canonical name.

    ``trainable`` is False for batch-norm running statistics, which are state
    and do not count as parameters.
    """

    name: str
    shape: tuple[int, ...]
    init: str
    trainable: bool = True

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def fan_in(self) -> int:
        return math.prod(self.shape[:-1])


@dataclass(frozen=True)
class Block:
    """One pre-activation residual block, as the backends build it."""

    name: str  # canonical prefix, e.g. "group2.block1"
    in_channels: int
    out_channels: int
    stride: int
    in_size: int  # spatial size of the input (square)

    @property
    def out_size(self) -> int:
        return self.in_size // self.stride

    @property
    def projection(self) -> bool:
        """True where the shortcut is a 1x1 convolution, not the identity."""
        return self.in_channels != self.out_channels


@dataclass(frozen=True)
class Layer:
    """One row of the layer table."""

    name: str
    op: str
    out_shape: tuple[int, int, int]  # H, W, C
    params: int
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _as_int(field: str, value, allowed: str) -> int:
    if isinstance(value, bool):
        raise SpecError(f"{field} must be {allowed}; got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise SpecError(f"{field} must be {allowed}; got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise SpecError(f"{field} must be {allowed}; got {value!r}")
    return value


def _as_float(field: str, value, allowed: str) -> float:
    if isinstance(value, bool):
        raise SpecError(f"{field} must be {allowed}; got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{field} must be {allowed}; got {value!r}") from None
    if not math.isfinite(result):
        raise SpecError(f"{field} must be {allowed}; got {value!r}")
    return result


DEPTH_ALLOWED = "6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...)"
WIDTH_ALLOWED = "a whole number >= 1"
DROPOUT_ALLOWED = "a rate in [0, 1)"
CLASSES_ALLOWED = "a whole number >= 2"


@dataclass(frozen=True)
class WRNSpec:
    """A validated WRN-d-k with dropout: the single source of every variant.

    Accepts ints or their string forms (as they come from a command line or a
    sweep file) and normalises them; anything else raises :class:`SpecError`
    with the allowed values.
    """

    depth: int
    width: int
    dropout: float = 0.0
    num_classes: int = 10
    image_size: int = 32
    in_channels: int = 3

    def __post_init__(self):
        problems, values = [], {}
        checks = (
            ("depth", _as_int, DEPTH_ALLOWED, lambda v: v >= 10 and (v - 4) % 6 == 0),
            ("width", _as_int, WIDTH_ALLOWED, lambda v: v >= 1),
            ("dropout", _as_float, DROPOUT_ALLOWED, lambda v: 0.0 <= v < 1.0),
            ("num_classes", _as_int, CLASSES_ALLOWED, lambda v: v >= 2),
        )
        for name, convert, allowed, valid in checks:
            try:
                values[name] = convert(name, getattr(self, name), allowed)
            except SpecError as err:
                problems.append(str(err))
                continue
            if not valid(values[name]):
                problems.append(f"{name} must be {allowed}; got {values[name]:g}")
        if (self.image_size, self.in_channels) != (32, 3):
            problems.append("the WRN spec is defined for 32x32x3 inputs only")
        if problems:
            raise SpecError("; ".join(problems))
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def blocks_per_group(self) -> int:
        return (self.depth - 4) // 6

    @property
    def name(self) -> str:
        return f"WRN-{self.depth}-{self.width}"

    @property
    def final_channels(self) -> int:
        return GROUP_BASE_CHANNELS[-1] * self.width

    @cached_property
    def blocks(self) -> tuple[Block, ...]:
        blocks, channels, size = [], STEM_CHANNELS, self.image_size
        for g, base in enumerate(GROUP_BASE_CHANNELS, start=1):
            for b in range(1, self.blocks_per_group + 1):
                stride = 2 if (g > 1 and b == 1) else 1
                block = Block(f"group{g}.block{b}", channels, base * self.width, stride, size)
                blocks.append(block)
                channels, size = block.out_channels, block.out_size
        return tuple(blocks)

    @cached_property
    def params(self) -> tuple[Param, ...]:
        """Every tensor of the model, trainable or not, in canonical order."""
        out = [Param("stem.conv.kernel", (3, 3, self.in_channels, STEM_CHANNELS), HE_NORMAL)]
        for block in self.blocks:
            p = block.name
            out += _batch_norm(f"{p}.bn1", block.in_channels)
            out.append(
                Param(f"{p}.conv1.kernel", (3, 3, block.in_channels, block.out_channels), HE_NORMAL)
            )
            out += _batch_norm(f"{p}.bn2", block.out_channels)
            out.append(
                Param(
                    f"{p}.conv2.kernel", (3, 3, block.out_channels, block.out_channels), HE_NORMAL
                )
            )
            if block.projection:
                out.append(
                    Param(
                        f"{p}.shortcut.kernel",
                        (1, 1, block.in_channels, block.out_channels),
                        HE_NORMAL,
                    )
                )
        out += _batch_norm("head.bn", self.final_channels)
        out.append(
            Param("head.dense.kernel", (self.final_channels, self.num_classes), UNIFORM_FAN_IN)
        )
        out.append(Param("head.dense.bias", (self.num_classes,), ZEROS))
        return tuple(out)

    @property
    def param_count(self) -> int:
        """Trainable parameters: what the paper's tables count."""
        return sum(p.size for p in self.params if p.trainable)

    @cached_property
    def layers(self) -> tuple[Layer, ...]:
        """The layer table, in forward order; ReLUs are folded into BN rows."""
        size = self.image_size
        rows = [_conv("stem.conv", size, self.in_channels, STEM_CHANNELS, 3, 1)]
        for block in self.blocks:
            p, cin, cout = block.name, block.in_channels, block.out_channels
            rows.append(_bn(f"{p}.bn1", block.in_size, cin))
            rows.append(_conv(f"{p}.conv1", block.in_size, cin, cout, 3, block.stride))
            rows.append(_bn(f"{p}.bn2", block.out_size, cout))
            if self.dropout > 0:
                rows.append(
                    Layer(
                        f"{p}.dropout",
                        f"dropout({self.dropout:g})",
                        (block.out_size, block.out_size, cout),
                        0,
                        0,
                    )
                )
            rows.append(_conv(f"{p}.conv2", block.out_size, cout, cout, 3, 1))
            if block.projection:
                rows.append(_conv(f"{p}.shortcut", block.in_size, cin, cout, 1, block.stride))
        last = self.blocks[-1].out_size
        rows.append(_bn("head.bn", last, self.final_channels))
        rows.append(
            Layer(
                "head.pool",
                f"avgpool{POOL_SIZE}x{POOL_SIZE}",
                (last // POOL_SIZE, last // POOL_SIZE, self.final_channels),
                0,
                0,
            )
        )
        dense = self.final_channels * self.num_classes
        rows.append(
            Layer("head.dense", "dense", (1, 1, self.num_classes), dense + self.num_classes, dense)
        )
        return tuple(rows)

    @property
    def forward_macs(self) -> int:
        """Multiply-accumulates of convolutions and the dense layer, per image."""
        return sum(layer.macs for layer in self.layers)

    @property
    def forward_flops(self) -> int:
        """Forward FLOPs per image, counted as 2 x MACs of conv and dense layers.

        Batch norm, ReLU, dropout, the residual additions and pooling are left
        out, as is usual for network FLOP counts; they add under 1 % here.
        """
        return 2 * self.forward_macs

    @property
    def train_flops(self) -> int:
        """FLOPs of one training step per image: forward plus a backward of twice it."""
        return 3 * self.forward_flops

    def describe(self) -> dict:
        """Plain data for JSON output and result rows."""
        return {
            "name": self.name,
            "depth": self.depth,
            "width": self.width,
            "dropout": self.dropout,
            "num_classes": self.num_classes,
            "blocks_per_group": self.blocks_per_group,
            "param_count": self.param_count,
            "forward_flops": self.forward_flops,
        }


def _batch_norm(prefix: str, channels: int) -> list[Param]:
    return [
        Param(f"{prefix}.scale", (channels,), ONES),
        Param(f"{prefix}.bias", (channels,), ZEROS),
        Param(f"{prefix}.mean", (channels,), ZEROS, trainable=False),
        Param(f"{prefix}.var", (channels,), ONES, trainable=False),
    ]


def _conv(name: str, in_size: int, cin: int, cout: int, kernel: int, stride: int) -> Layer:
    out = in_size // stride
    macs = out * out * cout * kernel * kernel * cin
    return Layer(
        name,
        f"conv{kernel}x{kernel}/{stride}",
        (out, out, cout),
        kernel * kernel * cin * cout,
        macs,
    )


def _bn(name: str, size: int, channels: int) -> Layer:
    return Layer(name, "bn-relu", (size, size, channels), 2 * channels, 0)
