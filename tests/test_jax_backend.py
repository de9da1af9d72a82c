"""The JAX backend's own choices: what tests/test_backends.py cannot see from outside.

The contract every backend meets (counts, export, loss going down, evaluation
changing nothing) is checked for JAX in test_backends.py and against torch in
test_parity.py; here are the places where flax or XLA defaults differ from the
spec and the backend has to work against them.
"""

import json
import os
import subprocess
import sys
from functools import partial

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("optax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from backends import jax_backend  # noqa: E402
from harness import config as cfg  # noqa: E402
from harness.config import RunConfig  # noqa: E402
from harness.data import synthetic  # noqa: E402
from harness.spec import BN_EPSILON, WRNSpec  # noqa: E402
from harness.weights import init_weights  # noqa: E402

IMAGES = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)


@pytest.fixture(scope="module")
def batch():
    data = synthetic(32, 1).train
    return data.images, data.labels


def make_trainer(**settings) -> jax_backend.JaxTrainer:
    settings = {"depth": 10, "width": 1, "batch_size": 32, **settings}
    return jax_backend.create_trainer(RunConfig(backend="jax", dataset="synthetic", **settings))


def abstract_variables(spec: WRNSpec, dtype=jnp.float32):
    model = jax_backend.WideResNet(spec, dtype)
    return model, jax.eval_shape(partial(model.init, train=False), jax.random.key(0), IMAGES)


@pytest.mark.parametrize(("depth", "width"), [(10, 1), (16, 4), (28, 10)])
def test_forward_gives_one_logit_per_class(depth, width):
    model, variables = abstract_variables(WRNSpec(depth, width))
    logits = jax.eval_shape(partial(model.apply, train=False), variables, IMAGES)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32


def test_variable_paths_are_the_canonical_names_with_statistics_apart():
    spec = WRNSpec(16, 2)
    _, variables = abstract_variables(spec)
    for collection, trainable in (("params", True), ("batch_stats", False)):
        flat = jax_backend._flat(variables[collection])
        expected = {p.name: p.shape for p in spec.params if p.trainable == trainable}
        assert {name: leaf.shape for name, leaf in flat.items()} == expected


# WRN-100-20 has 610 M parameters (2.4 GB): counted from shapes, none allocated.
@pytest.mark.parametrize(("depth", "width"), [(10, 1), (16, 8), (28, 10), (100, 20)])
def test_count_is_the_specs_and_allocates_nothing(depth, width):
    spec = WRNSpec(depth, width, dropout=0.3)
    assert jax_backend.count_params(spec) == spec.param_count


def test_bf16_computes_in_bfloat16_and_keeps_float32_parameters():
    model, variables = abstract_variables(WRNSpec(10, 1), jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits = jax.eval_shape(partial(model.apply, train=False), variables, IMAGES)
    assert logits.dtype == jnp.bfloat16


def test_he_normal_kernels_are_not_truncated():
    # jax.nn.initializers.he_normal truncates at 2 sigma; the spec's normal does not.
    kernel = make_trainer(width=4).export_weights()["group3.block1.conv2.kernel"]
    z = np.abs(kernel) / np.sqrt(2 / (9 * 256))
    assert np.mean(z > 2) == pytest.approx(0.0455, abs=0.005)


def test_batch_norm_normalises_and_tracks_statistics_as_torch_does():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(2.0, 3.0, (4, 5, 5, 6)).astype(np.float32)
    bn = jax_backend.BatchNorm()
    variables = bn.init(jax.random.key(0), x, True)
    y, updates = bn.apply(variables, x, True, mutable=["batch_stats"])

    reference = torch.nn.BatchNorm2d(6, eps=BN_EPSILON, momentum=0.1)
    expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(y, expected.detach().numpy(), rtol=1e-5, atol=1e-5)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], reference.running_mean.numpy(), rtol=1e-6)
    # Unbiased (n - 1) here, where flax's own BatchNorm would fold in the biased variance.
    np.testing.assert_allclose(stats["var"], reference.running_var.numpy(), rtol=1e-6)


def test_eval_with_batch_statistics_ignores_padding_and_changes_nothing(batch):
    images, labels = batch[0][:5], batch[1][:5]
    padded = make_trainer(eval_batch_size=16)
    exact = make_trainer(eval_batch_size=5)
    running = make_trainer()
    weights = init_weights(padded.config.spec, seed=0, nontrivial=True)
    for trainer in (padded, exact, running):
        trainer.import_weights(weights)

    loss, correct = padded.eval_step(images, labels, "batch")
    assert (loss, correct) == pytest.approx(exact.eval_step(images, labels, "batch"), rel=1e-5)
    assert loss != pytest.approx(running.eval_step(images, labels, "running")[0], rel=1e-3)
    for name, value in padded.export_weights().items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)


def test_smaller_eval_batches_reuse_a_few_compiled_sizes(batch):
    trainer = make_trainer(eval_batch_size=32)
    for size in (32, 20, 17, 3, 2):
        trainer.eval_step(batch[0][:size], batch[1][:size])
    assert trainer._eval_jit["running"]._cache_size() == 3  # 32 (also for 20 and 17), 4 and 2


def test_ahead_of_time_compile_serves_every_step_and_the_loss_falls(batch):
    trainer = make_trainer()
    seconds = trainer.compile(*batch)
    assert seconds > 0 and trainer.compile_method == "aot"

    losses = []
    for _ in range(8):
        losses.append(trainer.to_float(trainer.train_step(*batch, lr=0.1)))
        trainer.sync()
    assert losses[-1] < 0.8 * losses[0]
    assert trainer._train_jit._cache_size() == 0  # jit itself never traced a step


def test_device_batches_and_inference_agree_with_the_numpy_path(batch):
    trainer = make_trainer(eval_batch_size=32)
    images, labels = trainer.device_batch(*batch)
    logits = np.asarray(trainer.infer_step(images), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    loss, correct = trainer.eval_step(*batch)
    assert loss == pytest.approx(-log_probs[np.arange(len(labels)), batch[1]].sum(), rel=1e-5)
    assert correct == int((logits.argmax(axis=1) == batch[1]).sum())

    trainer.compile(*batch)
    assert np.isfinite(trainer.to_float(trainer.train_step(images, labels, lr=0.1)))
    assert trainer._train_jit._cache_size() == 0  # the device batch fits the compiled step
    assert trainer.matmul_flops() > 1e9


def test_dropout_masks_follow_the_seed_and_the_step(batch):
    weights = init_weights(WRNSpec(10, 1), seed=0)

    def first_losses(seed):
        trainer = make_trainer(dropout=0.3, seed=seed)
        trainer.import_weights(weights)
        # At lr 0 the weights stay put, so only the dropout masks can change the loss.
        return [trainer.to_float(trainer.train_step(*batch, lr=0.0)) for _ in range(2)]

    seed_1, seed_2 = first_losses(1), first_losses(2)
    assert seed_1[0] != seed_1[1]
    assert seed_1[0] != seed_2[0]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizer_steps_match_torch(optimizer):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)).astype(np.float32)}
    grads = [{"w": rng.normal(size=(3, 4)).astype(np.float32)} for _ in range(3)]
    config = RunConfig(backend="jax", optimizer=optimizer)
    lrs = [config.base_lr, config.base_lr, config.base_lr * 0.2 if optimizer == "sgd" else 0.01]

    tx = jax_backend._optimizer(config)
    state, ours = tx.init(params), params
    for grad, lr in zip(grads, lrs, strict=True):
        direction, state = tx.update(grad, state, ours)
        ours = jax.tree.map(lambda p, d, lr=lr: p - lr * d, ours, direction)

    weight = torch.nn.Parameter(torch.from_numpy(params["w"].copy()))
    if optimizer == "sgd":
        reference = torch.optim.SGD(
            [weight], lr=lrs[0], momentum=0.9, nesterov=True, weight_decay=cfg.SGD_WEIGHT_DECAY
        )
    else:
        wd = cfg.ADAM_WEIGHT_DECAY_RATE / config.base_lr
        reference = torch.optim.AdamW([weight], lr=lrs[0], eps=cfg.ADAM_EPS, weight_decay=wd)
    for grad, lr in zip(grads, lrs, strict=True):
        reference.param_groups[0]["lr"] = lr
        weight.grad = torch.from_numpy(grad["w"])
        reference.step()
    # Steps are ~1e-2 here; 1e-6 allows for the order of Adam's sqrt and division.
    np.testing.assert_allclose(ours["w"], weight.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_import_refuses_a_misshapen_tensor_and_moves_statistics_exactly():
    trainer = make_trainer()
    weights = init_weights(trainer.config.spec, seed=5, nontrivial=True)
    bad = {**weights, "head.dense.kernel": np.zeros((10, 64), np.float32)}
    with pytest.raises(ValueError, match="head.dense.kernel"):
        trainer.import_weights(bad)

    trainer.import_weights(weights)
    for name, value in trainer.export_weights().items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)


def test_resource_exhausted_is_out_of_memory():
    trainer = make_trainer()
    assert trainer.is_out_of_memory(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: 2 GiB"))
    assert not trainer.is_out_of_memory(jax.errors.JaxRuntimeError("INVALID_ARGUMENT: shape"))
    assert trainer.peak_device_memory_bytes() is None  # the CPU reports none


def test_gpu_memory_is_not_preallocated():
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_threads_size_xlas_pool_or_refuse_once_it_has_started():
    jax.devices()  # JAX has started here, so the thread count can no longer change
    with pytest.raises(RuntimeError, match="fresh process"):
        make_trainer(threads=1)

    code = (
        "import json, os; from backends.jax_backend import create_trainer; "
        "from harness.config import RunConfig; "
        "cpus = sorted(os.sched_getaffinity(0)); "
        "create_trainer(RunConfig(backend='jax', depth=10, width=1, threads=1)); "
        "tids = os.listdir('/proc/self/task'); "
        "names = [open(f'/proc/self/task/{t}/comm').read().strip() for t in tids]; "
        "masks = [sorted(os.sched_getaffinity(int(t))) for t in tids]; "
        "print(json.dumps([cpus, names, masks]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    cpus, names, masks = json.loads(result.stdout.splitlines()[-1])
    # One XLA worker, as asked...
    assert names.count("tf_XLAEigen") == 1
    # ...but no thread pinned: two one-thread runs side by side may use two cores.
    assert all(mask == cpus for mask in masks)
