"""JAX backend: the spec's WRN as a flax linen module, trained by one jitted step.

Module names are the spec's canonical names (``stem.conv``, ``group2.block1``,
``head.dense``), and flax already stores convolution kernels HWIO and dense
kernels (in, out), so a variable's path joined by dots is its canonical name
and weights move to and from the canonical format without any transposition.

Where this backend has to work against flax or XLA defaults to compute what the
torch backend computes:

* Batch norm is a module of its own, not ``flax.linen.BatchNorm``. flax folds
  the biased batch variance into the running variance; torch, and so the spec,
  folds in the unbiased one (times n / (n - 1), n = batch x height x width).
  It also lets ``eval_bn='batch'`` normalise a padded evaluation batch by the
  statistics of its real images only.
* Convolutions pad explicitly by k // 2 on every side as torch does; flax's
  'SAME' pads a stride-2 convolution on one side only, which shifts the grid.
* The He-normal kernels are drawn from an untruncated normal;
  ``jax.nn.initializers.he_normal`` truncates it.

Where it leaves XLA's defaults for speed or exactness, recorded here because
the row has no column for it:

* On the CPU, the steps are compiled with CPU_COMPILER_OPTIONS (YNNPACK for
  reductions only): 1.5 to 2x as fast as XLA's default on two cores, as
  accurate (see there).
* fp32 on a GPU computes convolutions and the dense layer at
  ``Precision.HIGHEST``: XLA would use TF32 there, as torch would if the torch
  backend did not switch it off.

``precision='bf16'`` (CUDA only) computes convolutions and the dense layer in
bfloat16; parameters, optimizer state, batch norm and the loss stay float32.

Threads: XLA has no setting for its CPU thread count. It sizes its pool, once,
when the CPU backend starts, from the CPUs the process may run on; so
``config.threads`` narrows the process's CPU affinity to that many CPUs while
JAX starts and widens it again once the pool exists (see
:mod:`harness.cpu_threads`); it fails if JAX has already started.
"""

from __future__ import annotations

import os

# Before jax starts a GPU client: by default it takes 75 % of the GPU's memory at
# once, which starves anything else on a shared GPU and hides the real peak.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import logging
import time
from functools import cache, partial
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from harness import config as cfg
from harness.backend import DeviceUnavailable, Trainer
from harness.config import RunConfig
from harness.cpu_threads import sized_thread_pools
from harness.data import CIFAR10_MEAN, CIFAR10_STD
from harness.spec import BN_EPSILON, BN_MOMENTUM, POOL_SIZE, STEM_CHANNELS, Block, WRNSpec
from harness.timing import best_time

log = logging.getLogger(__name__)

# normal(0, sqrt(2 / fan_in)); fan_in of an HWIO kernel is kh * kw * c_in.
HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)): the limit is sqrt(3 * scale / fan_in).
UNIFORM_FAN_IN = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
STATS = "batch_stats"
HIGHEST = jax.lax.Precision.HIGHEST

# On the CPU, XLA (jaxlib 0.10) gives convolutions, element-wise ops and
# reductions to YNNPACK. Leaving it the reductions only makes the WRN-16-4 step
# 1.5 to 2x as fast on two EPYC cores (batch 128: 4.5-5.9 s -> 3.0 s; torch
# 2.2 s): XLA's own convolutions keep both cores busy (1.8 on average against
# 1.3). On one thread the two are equally fast; larger CPUs are not measured.
# YNNPACK's reductions are the most accurate: over 8 WRN-10/16 cases the
# gradients were within 1.2e-6 (median) of float64, against 2.0e-6 for XLA's
# default and 4.7e-6 with XLA's own reductions. Passed per compilation, so a
# jaxlib that does not know the option is caught (_compiler_options) instead
# of aborting the process, as an unknown XLA_FLAGS entry does.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


class BatchNorm(nn.Module):
    """torch.nn.BatchNorm2d's arithmetic: biased variance to normalise, unbiased to track.

    ``use_batch_stats`` normalises by the batch's own statistics; they update
    the running averages only where the caller made ``batch_stats`` mutable
    (training). ``mask`` (one weight per image) leaves padding images out of
    the statistics.
    """

    @nn.compact
    def __call__(self, x: jax.Array, use_batch_stats: bool, mask: jax.Array | None = None):
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        running_mean = self.variable(STATS, "mean", jnp.zeros, (channels,))
        running_var = self.variable(STATS, "var", jnp.ones, (channels,))
        x = x.astype(jnp.float32)

        if use_batch_stats:
            mean, var, count = _moments(x, mask)
            if self.is_mutable_collection(STATS) and not self.is_initializing():
                unbiased = var * (count / (count - 1))
                running_mean.value = (1 - BN_MOMENTUM) * running_mean.value + BN_MOMENTUM * mean
                running_var.value = (1 - BN_MOMENTUM) * running_var.value + BN_MOMENTUM * unbiased
        else:
            mean, var = running_mean.value, running_var.value

        return (x - mean) * (jax.lax.rsqrt(var + BN_EPSILON) * scale) + bias


def _moments(x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-channel mean, biased variance and the number of values behind them."""
    axes = (0, 1, 2)
    if mask is None:
        mean = x.mean(axes)
        # Two passes, as torch: E[x^2] - E[x]^2 loses digits where the mean is large.
        return mean, jnp.square(x - mean).mean(axes), jnp.float32(x.size // x.shape[-1])
    weight = mask.astype(jnp.float32)[:, None, None, None]
    count = weight.sum() * x.shape[1] * x.shape[2]
    mean = (x * weight).sum(axes) / count
    return mean, (jnp.square(x - mean) * weight).sum(axes) / count, count


def _conv(features: int, kernel: int, stride: int, name: str, **numerics) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=HE_NORMAL,
        name=name,
        **numerics,
    )


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-[dropout]-conv3x3, plus the spec's shortcut."""

    block: Block
    dropout: float
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, use_batch_stats: bool, train: bool, mask=None):
        b, numerics = self.block, {"dtype": self.dtype, "precision": self.precision}
        activated = nn.relu(BatchNorm(name="bn1")(x, use_batch_stats, mask))
        # A projection shortcut sees the BN-ReLU'd input; the identity sees x itself.
        if b.projection:
            skip = _conv(b.out_channels, 1, b.stride, "shortcut", **numerics)(activated)
        else:
            skip = x

        out = _conv(b.out_channels, 3, b.stride, "conv1", **numerics)(activated)
        out = nn.relu(BatchNorm(name="bn2")(out, use_batch_stats, mask))
        if self.dropout > 0:
            out = nn.Dropout(self.dropout, deterministic=not train)(out)
        out = _conv(b.out_channels, 3, 1, "conv2", **numerics)(out)
        return out + skip


class WideResNet(nn.Module):
    """The spec's network; ``train`` turns on dropout and batch statistics.

    ``bn_batch`` normalises by batch statistics outside training too
    (``eval_bn='batch'``); ``mask`` marks the real images of a padded batch.
    """

    spec: WRNSpec
    dtype: Any = jnp.float32
    precision: Any = None  # of convolutions and the dense layer; None is XLA's default

    @nn.compact
    def __call__(self, x, train: bool, bn_batch: bool = False, mask=None):
        use_batch_stats = train or bn_batch
        numerics = {"dtype": self.dtype, "precision": self.precision}
        x = _conv(STEM_CHANNELS, 3, 1, "stem.conv", **numerics)(x)
        for block in self.spec.blocks:
            layer = PreActBlock(block, self.spec.dropout, name=block.name, **numerics)
            x = layer(x, use_batch_stats, train, mask)

        x = nn.relu(BatchNorm(name="head.bn")(x, use_batch_stats, mask))
        x = nn.avg_pool(x, (POOL_SIZE, POOL_SIZE), strides=(POOL_SIZE, POOL_SIZE))
        dense = nn.Dense(
            self.spec.num_classes,
            kernel_init=UNIFORM_FAN_IN,
            bias_init=nn.initializers.zeros,
            name="head.dense",
            **numerics,
        )
        return dense(x.reshape(x.shape[0], -1))


def count_params(spec: WRNSpec, model: str = "spec") -> int:
    """Trainable parameters, from shapes alone: nothing is allocated or computed."""
    images = jax.ShapeDtypeStruct((1, spec.image_size, spec.image_size, spec.in_channels), "f4")
    shapes = jax.eval_shape(partial(WideResNet(spec).init, train=False), jax.random.key(0), images)
    return sum(leaf.size for leaf in jax.tree.leaves(shapes["params"]))


def versions() -> dict[str, str]:
    import jaxlib

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
    }


def create_trainer(config: RunConfig) -> JaxTrainer:
    return JaxTrainer(config)


class TrainState(NamedTuple):
    """Everything a train step reads and replaces; donated to it, step by step."""

    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array


class JaxTrainer(Trainer):
    compile_method = "aot"

    def __init__(self, config: RunConfig):
        self.config = config
        _refuse_if_started(config.threads)
        with sized_thread_pools(config.threads):
            self.device = _device(config.device)  # starts the CPU client, whatever the device
        self.sharding = jax.sharding.SingleDeviceSharding(self.device)
        bf16 = config.precision == "bf16"
        # fp32 means fp32: XLA would otherwise use TF32 for fp32 convolutions on a GPU.
        self.precision = None if bf16 or self.device.platform == "cpu" else HIGHEST
        self.model = WideResNet(config.spec, jnp.bfloat16 if bf16 else jnp.float32, self.precision)
        self.optimizer = _optimizer(config)

        self.state = jax.device_put(self._init_state(jax.random.key(config.seed)), self.sharding)
        # Masks from XLA's RngBitGenerator, not threefry: the train step compiles
        # in 2/3 of the time (WRN-16-4, CPU). Its bits differ between CPU and GPU,
        # which masks may; the initial weights, from threefry, do not.
        dropout_key = jax.random.key(config.seed, impl="rbg")
        self.dropout_key = jax.device_put(dropout_key, self.sharding)

        self.options = _compiler_options(self.device.platform)
        step = partial(_train_step, self.model, self.optimizer, config.normalize)
        # Donating the state lets XLA update parameters and buffers in place.
        self._train_jit = jax.jit(step, donate_argnums=0, compiler_options=self.options)
        self._compiled, self._compiled_shape = None, None
        self._eval_jit = {
            bn: jax.jit(
                partial(_eval_step, self.model, config.normalize, bn == "batch"),
                compiler_options=self.options,
            )
            for bn in ("running", "batch")
        }
        infer = partial(_infer_step, self.model, config.normalize)
        self._infer_jit = jax.jit(infer, compiler_options=self.options)
        self._last: Any = None

    def _init_state(self, key: jax.Array) -> TrainState:
        images = jnp.zeros((1, 32, 32, 3), jnp.float32)
        with jax.default_device(self.device):
            init = jax.jit(partial(self.model.init, train=False)).lower(key, images)
            # One random draw per tensor makes LLVM's optimisation of this
            # run-once program cost seconds (7 s of 9 s for WRN-16-4 on a CPU).
            options = {"xla_backend_optimization_level": 0} if self.device.platform == "cpu" else {}
            variables = init.compile(compiler_options=options)(key, images)
            opt_state = self.optimizer.init(variables["params"])
        return TrainState(variables["params"], variables[STATS], opt_state, jnp.int32(0))

    def _put(self, images, labels) -> tuple[jax.Array, jax.Array]:
        """Numpy to the device; arrays there already (from device_batch) stay as they are."""
        if not isinstance(labels, jax.Array):
            labels = np.asarray(labels, dtype=np.int32)
        return jax.device_put(images, self.sharding), jax.device_put(labels, self.sharding)

    def device_batch(self, images, labels):
        return self._put(images, labels)

    def param_count(self) -> int:
        return sum(leaf.size for leaf in jax.tree.leaves(self.state.params))

    def compile(self, images, labels):
        began = time.perf_counter()
        args = (self.state, *self._abstract(images, labels), np.float32(0), self.dropout_key)
        self._compiled = self._train_jit.lower(*args).compile()
        self._compiled_shape = images.shape
        return time.perf_counter() - began

    def _abstract(self, images, labels) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
        return (
            jax.ShapeDtypeStruct(images.shape, np.uint8, sharding=self.sharding),
            jax.ShapeDtypeStruct((len(labels),), np.int32, sharding=self.sharding),
        )

    def train_step(self, images, labels, lr):
        # The executable compiled ahead of time serves its own shape; any other
        # shape goes through jit, which compiles it on first use.
        step = self._compiled if images.shape == self._compiled_shape else self._train_jit
        self.state, loss = step(
            self.state, *self._put(images, labels), np.float32(lr), self.dropout_key
        )
        self._last = (self.state, loss)
        return loss

    def eval_step(self, images, labels, bn="running"):
        # Pad to a power of two (at most the eval batch size): a smaller last
        # batch reuses one of a few compiled sizes and costs under twice its work.
        count = len(labels)
        size = max(count, min(self.config.eval_batch_size, 1 << (count - 1).bit_length()))
        padded = np.zeros((size, *images.shape[1:]), np.uint8)
        padded[:count] = images
        padded_labels = np.zeros(size, np.int32)
        padded_labels[:count] = labels
        mask = jax.device_put(np.arange(size) < count, self.sharding)

        variables = {"params": self.state.params, STATS: self.state.batch_stats}
        loss, correct = self._eval_jit[bn](variables, *self._put(padded, padded_labels), mask)
        return float(loss), int(correct)

    def infer_step(self, images):
        variables = {"params": self.state.params, STATS: self.state.batch_stats}
        self._last = self._infer_jit(variables, jax.device_put(images, self.sharding))
        return self._last

    def matmul_flops(self):
        size = 2048 if self.device.platform == "cpu" else 8192
        dtype = jnp.bfloat16 if self.config.precision == "bf16" else jnp.float32
        rng = np.random.default_rng(0)
        a, b = (
            jax.device_put(
                rng.standard_normal((size, size), np.float32).astype(dtype), self.sharding
            )
            for _ in range(2)
        )
        matmul = jax.jit(
            partial(jnp.matmul, precision=self.precision), compiler_options=self.options
        )

        def work():
            self._last = matmul(a, b)

        return 2 * size**3 / best_time(work, self.sync)

    def sync(self):
        jax.block_until_ready(self._last)

    def device_name(self) -> str:
        return self.device.device_kind

    def peak_device_memory_bytes(self):
        stats = self.device.memory_stats() if self.device.platform != "cpu" else None
        return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None

    def is_out_of_memory(self, error):
        if isinstance(error, jax.errors.JaxRuntimeError):
            return "RESOURCE_EXHAUSTED" in str(error)
        return isinstance(error, MemoryError)

    def export_weights(self):
        variables = {**_flat(self.state.params), **_flat(self.state.batch_stats)}
        return {
            p.name: np.array(variables[p.name], dtype=np.float32) for p in self.config.spec.params
        }

    def import_weights(self, weights):
        params, stats = {}, {}
        for param in self.config.spec.params:
            value = np.asarray(weights[param.name], dtype=np.float32)
            if value.shape != param.shape:
                raise ValueError(f"{param.name}: shape {value.shape}, the spec has {param.shape}")
            (params if param.trainable else stats)[param.name] = value
        # As in torch, only the weights change; the optimizer state is kept.
        self.state = self.state._replace(
            params=jax.device_put(_nest_like(self.state.params, params), self.sharding),
            batch_stats=jax.device_put(_nest_like(self.state.batch_stats, stats), self.sharding),
        )

    def close(self):
        self.sync()
        # Free device buffers now, not when the garbage collector gets to them.
        for leaf in jax.tree.leaves(self.state):
            leaf.delete()
        self.state, self._last, self._compiled = None, None, None


def _train_step(model, optimizer, normalize, state: TrainState, images, labels, lr, dropout_key):
    x = _prepare(images, normalize)
    rngs = {"dropout": jax.random.fold_in(dropout_key, state.step)}

    def loss_fn(params):
        variables = {"params": params, STATS: state.batch_stats}
        logits, updates = model.apply(variables, x, train=True, mutable=[STATS], rngs=rngs)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return loss.mean(), updates[STATS]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)

    direction, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, d: p - lr * d, state.params, direction)
    return TrainState(params, batch_stats, opt_state, state.step + 1), loss


def _infer_step(model, normalize, variables, images):
    return model.apply(variables, _prepare(images, normalize), train=False)


def _eval_step(model, normalize, bn_batch, variables, images, labels, mask):
    x = _prepare(images, normalize)
    logits = model.apply(variables, x, train=False, bn_batch=bn_batch, mask=mask)
    logits = logits.astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels) & mask
    return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(correct)


def _prepare(images: jax.Array, normalize: bool) -> jax.Array:
    """uint8 NHWC to float32, normalised as the torch backend does it."""
    x = images.astype(jnp.float32)
    if normalize:
        x = (x - jnp.array(CIFAR10_MEAN, jnp.float32)) / jnp.array(CIFAR10_STD, jnp.float32)
    return x


def _optimizer(config: RunConfig) -> optax.GradientTransformation:
    """The update direction at lr 1; the train step scales it by each step's lr.

    Scaling outside optax keeps the lr an argument of the compiled step, and
    matches torch, whose momentum buffer holds gradients, not lr-scaled steps.
    """
    if config.optimizer == "sgd":
        # torch.optim.SGD(nesterov=True, weight_decay): the decay joins the
        # gradient before the momentum buffer (coupled L2), on every tensor.
        return optax.chain(
            optax.add_decayed_weights(cfg.SGD_WEIGHT_DECAY),
            optax.trace(decay=cfg.SGD_MOMENTUM, nesterov=True),
        )
    # torch.optim.AdamW(weight_decay=rate / lr) as the torch backend sets it up:
    # p -= lr * (adam + wd * p), the decay decoupled from the moments.
    return optax.chain(
        optax.scale_by_adam(b1=cfg.ADAM_B1, b2=cfg.ADAM_B2, eps=cfg.ADAM_EPS),
        optax.add_decayed_weights(cfg.ADAM_WEIGHT_DECAY_RATE / config.base_lr),
    )


def _device(name: str) -> jax.Device:
    if name == "cpu":
        return jax.devices("cpu")[0]
    try:
        gpus = jax.devices("cuda")
    except RuntimeError:
        raise DeviceUnavailable(f"device {name} asked for, but jax sees no CUDA device") from None
    index = int(name.partition(":")[2] or 0)
    if index >= len(gpus):
        raise DeviceUnavailable(f"device {name} asked for, but jax sees {len(gpus)} CUDA device(s)")
    return gpus[index]


@cache
def _compiler_options(platform: str) -> dict[str, str]:
    """CPU_COMPILER_OPTIONS where this jaxlib accepts them; else XLA's defaults."""
    if platform != "cpu":
        return {}
    try:
        probe = jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS)
        probe.lower(jax.ShapeDtypeStruct((1,), jnp.float32)).compile()
    except jax.errors.JaxRuntimeError as err:
        log.warning("XLA refused %s, using its defaults: %s", CPU_COMPILER_OPTIONS, err)
        return {}
    return CPU_COMPILER_OPTIONS


def _refuse_if_started(threads: int | None) -> None:
    """XLA sizes its CPU pool once, when it starts: a thread count comes too late after that."""
    if threads is None:
        return
    from jax._src import xla_bridge  # no public way to ask whether backends started

    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            f"threads={threads}: JAX has already started in this process and XLA's CPU "
            "thread pool can no longer be resized; run in a fresh process"
        )


def _flat(tree) -> dict[str, jax.Array]:
    return traverse_util.flatten_dict(tree, sep=".")


def _nest_like(tree, flat: dict[str, np.ndarray]) -> dict:
    """Canonical names back into ``tree``'s structure (some module names hold dots)."""
    paths = traverse_util.flatten_dict(tree)
    return traverse_util.unflatten_dict({path: flat[".".join(path)] for path in paths})
