"""The shortest honest Trax training loop for the spec's WRN: the harness's yardstick.

The same network (the Trax backend's ``trax.layers`` model) trained the way a
Trax user writes it by hand: ``model.pure_fn`` under ``fastmath.grad``, Trax's
Nesterov ``Momentum`` with the L2 term added to the gradients, one
``fastmath.jit`` step with its state donated, on a float batch already on the
device. It runs on Trax's default math backend (jax), as the backend does
unless told otherwise.
"""

from __future__ import annotations

import importlib.util

# Triton segfaults when it loads after TensorFlow, and the backend's module loads
# it where it is installed: it comes before Trax here (see backends/trax_backend.py).
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401

import jax  # noqa: E402
import numpy as np  # noqa: E402
import trax  # noqa: E402
from trax import fastmath, shapes  # noqa: E402
from trax.fastmath import numpy as jnp  # noqa: E402

from backends.trax_backend import spec_model  # noqa: E402
from harness.spec import WRNSpec  # noqa: E402


def build(depth: int, width: int, batch: int, device: str = "cpu"):
    """A step function on one fixed batch, and the matching synchronisation."""
    if device != "cpu":
        raise ValueError("the Trax backend runs on the CPU only")
    fastmath.set_backend("jax")
    model = spec_model(WRNSpec(depth, width), "train")
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((batch, 32, 32, 3), np.float32))
    labels = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
    weights, state = model.init(
        shapes.ShapeDtype((batch, 32, 32, 3), np.float32), rng=fastmath.random.get_prng(0)
    )
    optimizer = trax.optimizers.Momentum(0.1, mass=0.9, weight_decay_rate=0.0, nesterov=True)
    slots, opt_params = optimizer.tree_init(weights)
    key = fastmath.random.get_prng(1)

    def train_step(train_state, images, labels):
        weights, state, slots, step = train_state

        def loss_fn(weights):
            logits, new_state = model.pure_fn(images, weights, state, key)
            log_probs = logits - fastmath.logsumexp(logits, axis=-1, keepdims=True)
            loss = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))
            return loss, (loss, new_state)

        grads, (loss, state) = fastmath.grad(loss_fn, has_aux=True)(weights)
        grads = fastmath.nested_map_multiarg(lambda g, w: g + 5e-4 * w, grads, weights)
        weights, slots, _ = optimizer.tree_update(
            step, grads, weights, slots, opt_params, store_slots=False
        )
        return (weights, state, slots, step + 1), loss

    compiled = fastmath.jit(train_step, donate_argnums=(0,))
    holder = {"state": (weights, state, slots, jnp.asarray(0, dtype=np.int32)), "loss": None}

    def step():
        holder["state"], holder["loss"] = compiled(holder["state"], images, labels)
        return holder["loss"]

    def sync():
        jax.block_until_ready(holder["state"])

    return step, sync
