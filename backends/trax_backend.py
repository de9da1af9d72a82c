"""Trax backend: the spec's WRN in ``trax.layers``, and Trax's own WideResnet beside it.

Two models (``config.model``):

* ``spec``: the paper's network built from ``trax.layers`` and read from
  ``spec.blocks``, with the spec's exact parameter count. Three pieces are
  written here because Trax's own differ from the spec (and from torch):
  batch norm (:class:`BatchNorm`: a two-pass variance, and the unbiased batch
  variance, times n / (n - 1), folded into the running variance, where
  ``tl.BatchNorm`` computes E[x^2] - E[x]^2 and folds in the biased one); the
  convolution (:class:`Conv`: no bias, and a stride-2 convolution padded by one
  pixel on every side as torch pads it, where Trax's 'SAME' pads (0, 1) and
  shifts the sampling grid); and the initialisers (:func:`he_normal`:
  ``tl.initializers.KaimingNormalInitializer`` takes the fan-in of an HWIO
  kernel as c_in alone, because ``_GetFans`` multiplies in the receptive field
  only for tensors of rank < 2, so its std is sqrt(2 / c_in), three times the
  spec's sqrt(2 / (9 c_in)) for a 3x3 kernel).
* ``trax-zoo``: ``trax.models.WideResnet`` exactly as the Trax CIFAR-10
  tutorial builds it (bn_momentum 0.9), so that the tutorial can be reproduced
  and compared. It is not the spec's network, and runs of it are labelled by
  their ``model`` column. Its deviations from the spec, read from
  trax/models/resnet.py and trax/layers in Trax 1.4.1:

  - no dropout (``dropout`` must be 0 for it);
  - the first block of each group has a 3x3 convolution shortcut, with the
    block's stride and a bias, applied to the raw input rather than to the
    BN-ReLU'd one, even in group 1 where the channel count does not change
    (the spec has the identity there and a 1x1 projection, without bias, of the
    BN-ReLU'd input in groups 2 and 3);
  - blocks 2..n of a group sit inside one residual connection around all of
    them, not one each; at depth 10 (n = 1) that residual wraps nothing and
    doubles its input;
  - every convolution has a bias (initialised normal, std 1e-6);
  - Trax's default initialisers: convolution kernels Glorot-normal with the
    fans taken as c_in and c_out alone (std sqrt(2 / (c_in + c_out)), 2.1 times
    the spec's He std for a 3x3 kernel with c_in = c_out), the dense kernel
    Glorot-uniform (limit sqrt(6 / (in + out)), not 1 / sqrt(in)), the dense bias
    normal with std 1e-6, not zeros;
  - ``tl.BatchNorm``: the variance as E[x^2] - E[x]^2, and the biased batch
    variance folded into the running variance (momentum 0.9 of the old value,
    the spec's 0.1 of the new, and epsilon 1e-5 as in the spec);
  - 'SAME' padding: stride-2 convolutions pad (0, 1), not (1, 1);
  - 295,866 parameters at depth 22, width 1, against the spec's 272,282:
    2,320 for the group-1 shortcut, 4,128 + 16,448 for 3x3-with-bias instead
    of 1x1 projections, and 688 for the convolution biases.

  Its weights have no canonical names, so it cannot export or import weights
  nor take part in ``wrnbench parity``.

The math backend (``trax_math``: 'jax', the default, or 'tensorflow-numpy') is
chosen with ``trax.fastmath.set_backend``, which holds for the whole process;
that is safe because every run has a process of its own, and it is reported by
:func:`versions`. The train step is this module's own (``fastmath.jit`` of the
gradient of ``model.pure_fn``, with weights, batch-norm state and optimizer
slots passed in and out), not Trax's ``Loop``, which checkpoints and evaluates
inside its steps. With 'jax' the step is compiled ahead of time
(``compile_method`` 'aot'); a tf.function cannot be, so with
'tensorflow-numpy' the first step (tracing, graph optimisation and one step)
is the compile time ('first_step'). Both use their defaults: XLA without the
jax backend's CPU_COMPILER_OPTIONS, TensorFlow graphs without XLA, as Trax
itself runs them. The seconds ``import trax`` took (it imports TensorFlow and
JAX) are reported as ``trax_import_s`` in :func:`versions`, never in a step or
compile time.

Optimizers are Trax's: SGD is ``trax.optimizers.Momentum`` (Nesterov, mass
0.9, no decay of its own) with the coupled L2 term 5e-4 x w added to every
gradient here, which is torch.optim.SGD(nesterov=True, weight_decay=5e-4);
Adam is ``trax.optimizers.Adam`` with the constants of harness/config.py.

CPU only: this backend has not been tried on a GPU, so the registry offers
``cpu`` alone and the trainer keeps JAX and TensorFlow off any GPU.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import time
from functools import partial
from typing import Any, NamedTuple

import numpy as np

# Triton (torch's compiler, which torch.optim imports on first use) segfaults
# when its library loads after TensorFlow's, as in `wrnbench parity --backends
# trax,torch`; where it is installed, it is loaded first (0.2 s).
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401

_import_began = time.perf_counter()
import trax  # noqa: E402 - timed: it imports TensorFlow and JAX
from trax import fastmath, shapes  # noqa: E402
from trax import layers as tl  # noqa: E402

TRAX_IMPORT_S = time.perf_counter() - _import_began

import jax  # noqa: E402 - already imported by trax
import tensorflow as tf  # noqa: E402 - already imported by trax
from trax.fastmath import numpy as jnp  # noqa: E402

from harness import config as cfg  # noqa: E402
from harness.backend import Trainer  # noqa: E402
from harness.config import RunConfig  # noqa: E402
from harness.cpu_threads import sized_thread_pools  # noqa: E402
from harness.data import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from harness.spec import (  # noqa: E402
    BN_EPSILON,
    BN_MOMENTUM,
    POOL_SIZE,
    STEM_CHANNELS,
    Block,
    WRNSpec,
)
from harness.timing import best_time  # noqa: E402

log = logging.getLogger(__name__)

MATH_BACKENDS = ("jax", "tensorflow-numpy")
DEFAULT_MATH = "jax"
ZOO = "trax-zoo"
ZOO_BN_MOMENTUM = 0.9  # the tutorial's; Trax's momentum is the old value's weight
# The models of each batch-norm behaviour: train (batch statistics, tracked),
# eval (running averages) and batch (batch statistics, not tracked, no dropout).
MODES = ("train", "eval", "batch")
_math_in_use: str | None = None  # set by each trainer: fastmath's backend is process-wide


def math_backend(config: RunConfig) -> str:
    """The Trax math backend a configuration asks for (``trax_math``), checked."""
    name = config.trax_math or DEFAULT_MATH
    if name not in MATH_BACKENDS:
        raise ValueError(f"trax_math must be one of {', '.join(MATH_BACKENDS)}; got {name!r}")
    return name


# Initialisers, as Trax calls them: (shape, rng) -> array.
def he_normal(shape, rng):
    """normal(0, sqrt(2 / fan_in)), fan_in = kh x kw x c_in of an HWIO kernel."""
    std = math.sqrt(2.0 / math.prod(shape[:-1]))
    return fastmath.random.normal(rng, tuple(shape)).astype(np.float32) * np.float32(std)


def uniform_fan_in(shape, rng):
    """uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for a dense kernel (in, out)."""
    bound = 1.0 / math.sqrt(shape[0])
    return fastmath.random.uniform(rng, tuple(shape), np.float32, -bound, bound)


def zeros(shape, rng):
    del rng
    return jnp.zeros(tuple(shape), dtype=np.float32)


class Conv(tl.Conv):
    """A bias-free convolution padded by kernel // 2 on every side, as torch pads."""

    PARTS = {"weights": ("kernel",), "state": ()}  # canonical suffixes, in Trax's order

    def __init__(self, name: str, features: int, kernel: int, stride: int):
        # 'SAME' pads a stride-1 convolution evenly; a strided one it pads (0, 1).
        padding = "SAME" if stride == 1 else "VALID"
        super().__init__(
            features,
            (kernel, kernel),
            (stride, stride),
            padding=padding,
            kernel_initializer=he_normal,
            use_bias=False,
        )
        self._canonical = name
        self._pad = kernel // 2 if stride > 1 else 0

    def forward(self, x):
        if self._pad:
            p = self._pad
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="constant")
        return super().forward(x)


class Dense(tl.Dense):
    PARTS = {"weights": ("kernel", "bias"), "state": ()}

    def __init__(self, name: str, features: int):
        super().__init__(features, kernel_initializer=uniform_fan_in, bias_initializer=zeros)
        self._canonical = name


class BatchNorm(tl.Layer):
    """torch.nn.BatchNorm2d's arithmetic: biased variance to normalise, unbiased to track.

    ``mode`` 'train' normalises by the batch's statistics and tracks them,
    'batch' normalises by them without tracking (``eval_bn='batch'``), 'eval'
    normalises by the running averages. Weights are (scale, bias), state
    (mean, var), each of shape (channels,).
    """

    PARTS = {"weights": ("scale", "bias"), "state": ("mean", "var")}

    def __init__(self, name: str, mode: str):
        super().__init__(name="BatchNorm")
        self._canonical = name
        self._mode = mode

    def init_weights_and_state(self, input_signature):
        channels = input_signature.shape[-1]
        self.weights = (jnp.ones(channels, np.float32), jnp.zeros(channels, np.float32))
        self.state = (jnp.zeros(channels, np.float32), jnp.ones(channels, np.float32))

    def forward(self, x):
        scale, bias = self.weights
        if self._mode == "eval":
            mean, var = self.state
        else:
            mean, var = _moments(x)
        if self._mode == "train":
            count = x.shape[0] * x.shape[1] * x.shape[2]
            running_mean, running_var = self.state
            unbiased = _unbiased(var, count)
            self.state = (
                (1 - BN_MOMENTUM) * running_mean + BN_MOMENTUM * mean,
                (1 - BN_MOMENTUM) * running_var + BN_MOMENTUM * unbiased,
            )
        return (x - mean) * (scale / jnp.sqrt(var + BN_EPSILON)) + bias


def _unbiased(var, count: int):
    """The batch variance torch tracks: the biased one times n / (n - 1)."""
    return var * np.float32(count / (count - 1))


def _moments(x):
    """Per-channel mean and biased variance, in two passes as torch computes them."""
    mean = jnp.mean(x, axis=(0, 1, 2))
    return mean, jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))


def _block(block: Block, dropout: float, mode: str) -> tl.Layer:
    """BN-ReLU-conv3x3, BN-ReLU-[dropout]-conv3x3, plus the spec's shortcut."""
    p, out = block.name, block.out_channels
    body = [
        Conv(f"{p}.conv1", out, 3, block.stride),
        BatchNorm(f"{p}.bn2", mode),
        tl.Relu(),
        tl.Dropout(dropout, mode="train" if mode == "train" else "eval") if dropout > 0 else [],
        Conv(f"{p}.conv2", out, 3, 1),
    ]
    activate = [BatchNorm(f"{p}.bn1", mode), tl.Relu()]
    if block.projection:
        # The projection sees the BN-ReLU'd input, so both branches start after it.
        shortcut = Conv(f"{p}.shortcut", out, 1, block.stride)
        return tl.Serial(activate, tl.Residual(body, shortcut=shortcut))
    # The identity sees the block's raw input.
    return tl.Residual(activate, body)


def spec_model(spec: WRNSpec, mode: str) -> tl.Layer:
    """The spec's network in Trax layers, for one batch-norm behaviour of MODES."""
    return tl.Serial(
        Conv("stem.conv", STEM_CHANNELS, 3, 1),
        [_block(block, spec.dropout, mode) for block in spec.blocks],
        BatchNorm("head.bn", mode),
        tl.Relu(),
        tl.AvgPool((POOL_SIZE, POOL_SIZE), strides=(POOL_SIZE, POOL_SIZE)),
        tl.Flatten(),
        Dense("head.dense", spec.num_classes),
    )


def zoo_model(spec: WRNSpec, mode: str) -> tl.Layer:
    """trax.models.WideResnet as the tutorial builds it; 'batch' is its train mode.

    The tutorial's evaluation runs the train-mode model, whose batch norm
    normalises by each batch's statistics; the state it returns is dropped here.
    """
    return trax.models.WideResnet(
        n_blocks=spec.blocks_per_group,
        widen_factor=spec.width,
        n_output_classes=spec.num_classes,
        bn_momentum=ZOO_BN_MOMENTUM,
        mode="eval" if mode == "eval" else "train",
    )


def build_model(spec: WRNSpec, model: str, mode: str) -> tl.Layer:
    if model == "spec":
        return spec_model(spec, mode)
    if model == ZOO:
        return zoo_model(spec, mode)
    raise ValueError(f"backend trax offers model spec or {ZOO}; got {model!r}")


def _signature(batch: int = 1) -> shapes.ShapeDtype:
    return shapes.ShapeDtype((batch, 32, 32, 3), np.float32)


def count_params(spec: WRNSpec, model: str = "spec") -> int:
    """Trainable parameters, from shapes alone: nothing is allocated or computed."""
    weights, _ = build_model(spec, model, "eval").weights_and_state_signature(_signature())
    return sum(math.prod(leaf.shape) for leaf in fastmath.tree_flatten(weights))


def versions() -> dict[str, str]:
    """Library versions, the math backend in use and how long ``import trax`` took.

    The math backend is the one the last trainer of this process chose; a
    caller that asks before creating a trainer gets "not chosen yet".
    """
    return {
        "trax": importlib.metadata.version("trax"),
        "jax": jax.__version__,
        "jaxlib": importlib.metadata.version("jaxlib"),
        "tensorflow": tf.__version__,
        "trax_math": _math_in_use or "not chosen yet",
        "trax_import_s": f"{TRAX_IMPORT_S:.1f}",
    }


def create_trainer(config: RunConfig) -> TraxTrainer:
    return TraxTrainer(config)


class TrainState(NamedTuple):
    """Everything a train step reads and replaces."""

    weights: Any
    state: Any  # batch-norm statistics (and dropout rates): Trax's layer state
    slots: Any  # the optimizer's
    step: Any  # int32 scalar: Adam's bias correction and the dropout key use it


class TraxTrainer(Trainer):
    def __init__(self, config: RunConfig, math: str | None = None):
        """``math`` overrides the configuration's ``trax_math`` (tests)."""
        self.config = config
        self.math = math or math_backend(config)
        if config.model == ZOO and config.dropout > 0:
            raise ValueError(f"model {ZOO} has no dropout; got dropout {config.dropout:g}")
        start_math(self.math, config.threads)
        self.compile_method = "aot" if self.math == "jax" else "first_step"

        self.models = {mode: build_model(config.spec, config.model, mode) for mode in MODES}
        self.optimizer = _optimizer(config)
        init_key, self.dropout_key = fastmath.random.split(fastmath.random.get_prng(config.seed), 2)
        self.train_state = self._init_state(init_key)

        step = partial(_train_step, self.models["train"], self.optimizer, self._l2(), config)
        # Donating the state lets XLA update weights in place; TensorFlow ignores it.
        self._train_jit = fastmath.jit(step, donate_argnums=(0,))
        self._compiled, self._compiled_shape = None, None
        self._eval_jit = {
            mode: fastmath.jit(partial(_eval_step, self.models[mode], config.normalize))
            for mode in ("eval", "batch")
        }
        self._infer_jit = fastmath.jit(partial(_infer_step, self.models["eval"], config.normalize))
        self._last: Any = None

    def _init_state(self, key) -> TrainState:
        weights, state = self.models["train"].init(_signature(), rng=key)
        # pure_fn restores each layer's weights after a call, so every model holds some.
        for mode in ("eval", "batch"):
            self.models[mode].weights, self.models[mode].state = weights, state
        slots, opt_params = self.optimizer.tree_init(weights)
        # Under tensorflow-numpy, Trax makes these float64 (jnp.array of a Python
        # float), which turns the slots float64 after one step; keep them float32.
        self.opt_params = {k: jnp.asarray(v, dtype=np.float32) for k, v in opt_params.items()}
        return TrainState(weights, state, slots, jnp.asarray(0, dtype=np.int32))

    def _l2(self) -> float:
        return cfg.SGD_WEIGHT_DECAY if self.config.optimizer == "sgd" else 0.0

    def _put(self, images, labels):
        """Numpy to the math backend's arrays; arrays from device_batch pass as they are."""
        if isinstance(images, np.ndarray):
            images = jnp.asarray(images)
        if isinstance(labels, (np.ndarray, list)):
            labels = jnp.asarray(np.asarray(labels, dtype=np.int32))
        return images, labels

    def device_batch(self, images, labels):
        return self._put(images, labels)

    def param_count(self) -> int:
        leaves = fastmath.tree_flatten(self.train_state.weights)
        return sum(math.prod(leaf.shape) for leaf in leaves)

    def compile(self, images, labels):
        if self.math != "jax":
            return None  # a tf.function traces on its first call: see compile_method
        began = time.perf_counter()
        abstract = (
            jax.ShapeDtypeStruct(images.shape, np.uint8),
            jax.ShapeDtypeStruct((len(labels),), np.int32),
        )
        args = (self.train_state, *abstract, np.float32(0), self.dropout_key, self.opt_params)
        self._compiled = self._train_jit.lower(*args).compile()
        self._compiled_shape = images.shape
        return time.perf_counter() - began

    def train_step(self, images, labels, lr):
        step = self._train_jit
        if self._compiled is not None and images.shape == self._compiled_shape:
            step = self._compiled
        images, labels = self._put(images, labels)
        self.train_state, loss = step(
            self.train_state, images, labels, np.float32(lr), self.dropout_key, self.opt_params
        )
        self._last = (self.train_state, loss)
        return loss

    def eval_step(self, images, labels, bn="running"):
        # A smaller last batch is evaluated as it is: one more compile (or trace)
        # for its shape, and with bn='batch' the statistics of its own images.
        mode = "batch" if bn == "batch" else "eval"
        s = self.train_state
        loss, correct = self._eval_jit[mode](
            s.weights, s.state, *self._put(images, labels), self.dropout_key
        )
        return float(np.asarray(loss)), int(np.asarray(correct))

    def infer_step(self, images):
        s = self.train_state
        images, _ = self._put(images, np.zeros(0, np.int32))
        self._last = self._infer_jit(s.weights, s.state, images, self.dropout_key)
        return self._last

    def matmul_flops(self):
        size = 2048
        rng = np.random.default_rng(0)
        a, b = (jnp.asarray(rng.standard_normal((size, size), np.float32)) for _ in range(2))
        matmul = fastmath.jit(jnp.matmul)

        def work():
            self._last = matmul(a, b)

        return 2 * size**3 / best_time(work, self.sync)

    def sync(self):
        if self._last is None:
            return
        if self.math == "jax":
            jax.block_until_ready(self._last)
            return
        # A tf.function call returns when its outputs exist; reading one waits for it.
        for leaf in tf.nest.flatten(self._last)[-1:]:
            np.asarray(leaf)

    def to_float(self, value):
        return float(np.asarray(value))

    def device_name(self) -> str:
        if self.math == "jax":
            return jax.devices("cpu")[0].device_kind
        return "cpu"

    def export_weights(self):
        self._need_spec("export")
        s = self.train_state
        found = {
            **_named_arrays(self.models["train"], s.weights, "weights"),
            **_named_arrays(self.models["train"], s.state, "state"),
        }
        return {p.name: np.array(found[p.name], dtype=np.float32) for p in self.config.spec.params}

    def import_weights(self, weights):
        self._need_spec("import")
        values = {}
        for param in self.config.spec.params:
            value = np.asarray(weights[param.name], dtype=np.float32)
            if value.shape != param.shape:
                raise ValueError(f"{param.name}: shape {value.shape}, the spec has {param.shape}")
            values[param.name] = value
        model, s = self.models["train"], self.train_state
        # As in torch, only the weights change; the optimizer slots are kept.
        self.train_state = s._replace(
            weights=_replace_named(model, s.weights, "weights", values),
            state=_replace_named(model, s.state, "state", values),
        )

    def _need_spec(self, verb: str) -> None:
        if self.config.model != "spec":
            raise NotImplementedError(
                f"model {self.config.model} is not the spec's network: its weights have no "
                f"canonical names to {verb}"
            )

    def close(self):
        self.sync()
        self.train_state, self._last, self._compiled = None, None, None


def _train_step(model, optimizer, l2, config, train_state, images, labels, lr, key, opt_params):
    x = _prepare(images, config.normalize)
    rng = fastmath.random.fold_in(key, train_state.step)

    def loss_fn(weights):
        logits, state = model.pure_fn(x, weights, train_state.state, rng)
        loss = jnp.mean(_cross_entropy(logits, labels))
        return loss, (loss, state)

    # grad with the loss as auxiliary output: one forward pass. fastmath's
    # value_and_grad on TensorFlow runs the forward pass twice.
    grads, (loss, state) = fastmath.grad(loss_fn, has_aux=True)(train_state.weights)
    if l2:
        # Coupled L2, as torch.optim.SGD's weight_decay: part of the gradient.
        grads = fastmath.nested_map_multiarg(lambda g, w: g + l2 * w, grads, train_state.weights)

    params = {**opt_params, "learning_rate": lr}
    weights, slots, _ = optimizer.tree_update(
        train_state.step, grads, train_state.weights, train_state.slots, params, store_slots=False
    )
    return TrainState(weights, state, slots, train_state.step + 1), loss


def _eval_step(model, normalize, weights, state, images, labels, key):
    logits, _ = model.pure_fn(_prepare(images, normalize), weights, state, key)
    correct = jnp.argmax(logits, axis=-1).astype(np.int32) == labels
    return jnp.sum(_cross_entropy(logits, labels)), jnp.sum(correct.astype(np.int32))


def _infer_step(model, normalize, weights, state, images, key):
    logits, _ = model.pure_fn(_prepare(images, normalize), weights, state, key)
    return logits


def _prepare(images, normalize: bool):
    """uint8 NHWC to float32, normalised as the torch backend does it."""
    x = images.astype(np.float32)
    if normalize:
        x = (x - np.array(CIFAR10_MEAN, np.float32)) / np.array(CIFAR10_STD, np.float32)
    return x


def _cross_entropy(logits, labels):
    """Per-image cross-entropy of integer labels."""
    log_probs = logits - fastmath.logsumexp(logits, axis=-1, keepdims=True)
    classes = jnp.arange(logits.shape[-1], dtype=np.int32)
    one_hot = (jnp.expand_dims(labels, -1) == classes).astype(np.float32)
    return -jnp.sum(log_probs * one_hot, axis=-1)


def _optimizer(config: RunConfig):
    """Trax's optimizer for the configuration, at its base learning rate.

    The train step passes each step's lr in place of it.
    """
    if config.optimizer == "sgd":
        # The L2 term is added to the gradients by the train step (coupled).
        return trax.optimizers.Momentum(
            learning_rate=config.base_lr,
            mass=cfg.SGD_MOMENTUM,
            weight_decay_rate=0.0,
            nesterov=True,
        )
    return trax.optimizers.Adam(
        learning_rate=config.base_lr,
        weight_decay_rate=cfg.ADAM_WEIGHT_DECAY_RATE,
        b1=cfg.ADAM_B1,
        b2=cfg.ADAM_B2,
        eps=cfg.ADAM_EPS,
    )


def start_math(name: str, threads: int | None) -> None:
    """Select Trax's math backend for the process, on the CPU, with ``threads`` threads."""
    global _math_in_use
    if threads is not None:
        _refuse_if_started(name, threads)
    with sized_thread_pools(threads):
        if name == "tensorflow-numpy" and threads is not None:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        fastmath.set_backend(name)
        _math_in_use = name
        cpu = jax.devices("cpu")[0]  # XLA's CPU pool starts here, under the narrowed mask
    # This backend runs on the CPU only: keep the math backend off any GPU.
    if name == "jax":
        jax.config.update("jax_default_device", cpu)
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow has started, and chosen its devices
        log.debug("TensorFlow already started; its visible devices stay as they are")


def _refuse_if_started(name: str, threads: int) -> None:
    """The math backend's pools are sized once, when it starts: a thread count comes too late.

    XLA's from the CPUs the process may run on (see :mod:`harness.cpu_threads`),
    TensorFlow's intra- and inter-op pools from its threading settings.
    """
    from jax._src import xla_bridge  # no public way to ask whether backends started

    started = xla_bridge.backends_are_initialized() if name == "jax" else _tf_started()
    if started:
        raise RuntimeError(
            f"threads={threads}: {name} has already started in this process and its "
            "thread pools can no longer be resized; run in a fresh process"
        )


def _tf_started() -> bool:
    from tensorflow.python.eager import context  # no public way to ask either

    return context.context()._initialized


def _named_leaves(layer: tl.Layer, tree):
    """(layer, its part of ``tree``) for every layer with a canonical name."""
    if hasattr(layer, "_canonical"):
        yield layer, tree
        return
    if not layer.sublayers:  # an unnamed leaf (ReLU, dropout): nothing of the spec's
        return
    for sublayer, subtree in zip(layer.sublayers, tree, strict=True):
        yield from _named_leaves(sublayer, subtree)


def _parts(layer: tl.Layer, kind: str, subtree) -> dict[str, Any]:
    """A named layer's arrays of ``kind`` ('weights' or 'state') by canonical name."""
    suffixes = layer.PARTS[kind]
    values = (subtree,) if len(suffixes) == 1 else tuple(subtree)
    return {f"{layer._canonical}.{s}": v for s, v in zip(suffixes, values, strict=False)}


def _named_arrays(model: tl.Layer, tree, kind: str) -> dict[str, Any]:
    """Canonical name to array, over a weights or state tree of ``model``."""
    found = {}
    for layer, subtree in _named_leaves(model, tree):
        found.update(_parts(layer, kind, subtree))
    return found


def _replace_named(model: tl.Layer, tree, kind: str, values: dict[str, np.ndarray]):
    """``tree`` with every canonically named array replaced from ``values``."""
    if hasattr(model, "_canonical"):
        names = list(_parts(model, kind, tree))
        new = tuple(jnp.asarray(values[name]) for name in names)
        return new[0] if len(names) == 1 else (new if names else tree)
    if not model.sublayers:
        return tree
    return tuple(
        _replace_named(sublayer, subtree, kind, values)
        for sublayer, subtree in zip(model.sublayers, tree, strict=True)
    )
