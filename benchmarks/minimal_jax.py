"""The shortest honest JAX training loop for the spec's WRN: the harness's yardstick.

The same network (the JAX backend's flax module) with optax SGD and one
jitted, donated step on a normalised float batch already on the device. It
compiles with the same XLA options as the backend, so that a difference
between the two is the harness's own overhead, not the compiler's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from backends.jax_backend import STATS, WideResNet, _compiler_options
from harness.spec import WRNSpec


def build(depth: int, width: int, batch: int, device: str = "cpu"):
    """A step function on one fixed batch, and the matching synchronisation."""
    model = WideResNet(WRNSpec(depth, width), jnp.float32, None)
    key = jax.random.key(0)
    images = jax.random.normal(key, (batch, 32, 32, 3))
    labels = jax.random.randint(key, (batch,), 0, 10)
    variables = model.init(key, images[:1], train=False)
    optimizer = optax.chain(
        optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9, nesterov=True)
    )
    state = (variables["params"], variables[STATS], optimizer.init(variables["params"]))

    def train_step(state, images, labels, key):
        params, stats, opt_state = state

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, STATS: stats},
                images,
                train=True,
                rngs={"dropout": key},
                mutable=[STATS],
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates[
                STATS
            ]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), stats, opt_state), loss

    platform = jax.devices()[0].platform
    compiled = jax.jit(train_step, donate_argnums=0, compiler_options=_compiler_options(platform))
    holder = {"state": state, "loss": None}

    def step():
        holder["state"], holder["loss"] = compiled(holder["state"], images, labels, key)
        return holder["loss"]

    def sync():
        jax.block_until_ready(holder["state"])

    return step, sync
