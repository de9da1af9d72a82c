"""The Trax backend's checks, run in a process of their own.

``import trax`` takes about a minute (it imports TensorFlow), so no pytest
process imports it. ``tests/conftest.py`` starts this script in the background
as soon as collection has selected a test of ``tests/test_trax_backend.py``;
the import and the checks then run while the rest of the suite does, and each
test of that module waits for the report and asserts on one check.

The report is JSON, rewritten after every check so that a crash or a timeout
leaves the finished ones readable: ``{"import_s", "done", "checks": {name:
{"ok", "message", "seconds"}}}``. By hand: ``python -m tests.trax_checks
REPORT.json``.

The checks cover what tests/test_backends.py and tests/test_parity.py check for
the backends they import in-process, and what is Trax's own: the zoo model, both
math backends (``trax.fastmath.set_backend`` holds for the whole process, so the
'tensorflow-numpy' checks come last) and the compile method of each.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TEST_MODULE = "test_trax_backend.py"
WAIT_S = 1500  # the import alone takes 1-2 minutes on a busy two-core machine
ZOO_TUTORIAL_COUNT = 295_866  # trax.models.WideResnet(n_blocks=3, widen_factor=1)
TF = "tensorflow-numpy"

CHECKS: dict[str, Callable[[], str]] = {}


class Skip(Exception):  # noqa: N818 - read as ``raise Skip(reason)``
    """A check that cannot run here (torch missing); its test skips with the reason."""


def _need_torch() -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise Skip("torch not installed: the torch reference is needed")


def check(fn: Callable[[], str]) -> Callable[[], str]:
    """Register a check: it returns what it saw, or raises with what went wrong."""
    CHECKS[fn.__name__] = fn
    return fn


# ---------------------------------------------------------------- the pytest side


@dataclass
class _Run:
    process: subprocess.Popen
    report: Path
    log: Path


_run: _Run | None = None


def start_if_selected(items) -> None:
    """Start the checks if any collected test is of TEST_MODULE and Trax is installed."""
    from harness import registry

    if registry.is_available("trax") and any(item.path.name == TEST_MODULE for item in items):
        start()


def start() -> None:
    """Start the checks in the background, once per pytest session."""
    global _run
    if _run is not None:
        return
    folder = Path(tempfile.mkdtemp(prefix="wrnbench-trax-"))
    report, log = folder / "report.json", folder / "checks.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.trax_checks", str(report)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    _run = _Run(process, report, log)


def wait() -> dict:
    """The finished report; starts the checks first if no hook did."""
    start()
    try:
        _run.process.wait(timeout=max(1.0, WAIT_S - _age()))
    except subprocess.TimeoutExpired:
        _run.process.kill()
        _run.process.wait()
    report = json.loads(_run.report.read_text()) if _run.report.exists() else {"checks": {}}
    report["returncode"] = _run.process.returncode
    report["log_tail"] = _tail(_run.log)
    return report


def stop() -> None:
    """End the checks if they still run when the session ends (tests deselected, -x)."""
    if _run is not None and _run.process.poll() is None:
        _run.process.kill()
        _run.process.wait()


def _age() -> float:
    return time.time() - _run.report.parent.stat().st_ctime


def _tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------- the checks


def _config(**settings):
    from harness.config import RunConfig

    values = {"backend": "trax", "depth": 10, "width": 1, "dataset": "synthetic", **settings}
    return RunConfig(**values)


def _trainer(math: str = "jax", **settings):
    from backends import trax_backend

    return trax_backend.TraxTrainer(_config(**settings), math=math)


def _batch(size: int = 32):
    from harness.data import synthetic

    data = synthetic(64, 64).train
    return data.images[:size], data.labels[:size]


def _losses(trainer, steps: int, lr: float) -> list[float]:
    images, labels = _batch()
    losses = []
    for _ in range(steps):
        losses.append(trainer.to_float(trainer.train_step(images, labels, lr)))
        trainer.sync()
    assert all(np.isfinite(losses)), f"losses {losses}"
    return losses


@contextlib.contextmanager
def _default_math(name: str):
    """Make ``name`` the math backend of trainers built from a RunConfig alone (parity)."""
    from backends import trax_backend

    saved, trax_backend.DEFAULT_MATH = trax_backend.DEFAULT_MATH, name
    try:
        yield
    finally:
        trax_backend.DEFAULT_MATH = saved


@check
def zoo_count_is_the_tutorials() -> str:
    from backends import trax_backend
    from harness.spec import WRNSpec

    count = trax_backend.count_params(WRNSpec(22, 1), "trax-zoo")
    assert count == ZOO_TUTORIAL_COUNT, f"trax-zoo WRN-22-1 has {count:,}"
    return f"trax-zoo WRN-22-1: {count:,} parameters"


@check
def spec_count_is_exactly_the_specs() -> str:
    from backends import trax_backend
    from harness.spec import WRNSpec

    for depth, width in [(10, 1), (16, 4), (22, 2), (28, 10), (40, 4)]:
        spec = WRNSpec(depth, width, 0.3)
        count = trax_backend.count_params(spec)
        assert count == spec.param_count, f"{spec.name}: {count:,}, spec {spec.param_count:,}"
    return "WRN-10-1, 16-4, 22-2, 28-10 and 40-4 match the spec"


@check
def forward_gives_one_logit_per_class() -> str:
    from trax import shapes

    from backends import trax_backend
    from harness.spec import WRNSpec

    images = shapes.ShapeDtype((2, 32, 32, 3), np.float32)
    for model, depth, width in [("spec", 10, 1), ("spec", 16, 2), ("trax-zoo", 22, 1)]:
        for mode in trax_backend.MODES:
            net = trax_backend.build_model(WRNSpec(depth, width), model, mode)
            net.init(images)
            out = net.output_signature(images)
            assert out.shape == (2, 10), f"{model} {depth}-{width} {mode}: {out.shape}"
    return "logits (2, 10) in every mode"


@check
def trainer_exports_every_canonical_tensor() -> str:
    trainer = _trainer(depth=16, width=2)
    spec = trainer.config.spec
    assert trainer.param_count() == spec.param_count
    weights = trainer.export_weights()
    assert list(weights) == [p.name for p in spec.params], "names or order differ"
    for param in spec.params:
        value = weights[param.name]
        assert value.shape == param.shape and value.dtype == np.float32, param.name
    return f"{len(weights)} tensors of {spec.name}"


@check
def initialisation_follows_the_spec() -> str:
    from harness.spec import HE_NORMAL, UNIFORM_FAN_IN

    trainer = _trainer(depth=16, width=4)
    weights = trainer.export_weights()
    for param in trainer.config.spec.params:
        value = weights[param.name]
        if param.init == HE_NORMAL and param.size >= 10_000:
            std = np.sqrt(2 / param.fan_in)
            assert abs(value.std() / std - 1) < 0.05, f"{param.name}: std {value.std()}, {std}"
            assert abs(value.mean()) < 0.05 * std, param.name
        elif param.init == UNIFORM_FAN_IN:
            bound = 1 / np.sqrt(param.fan_in)
            assert np.abs(value.max()) <= bound, param.name
            assert abs(value.std() / (bound / np.sqrt(3)) - 1) < 0.1, param.name
        elif param.init != HE_NORMAL:
            expected = 1.0 if param.init == "ones" else 0.0
            assert np.all(value == expected), param.name
    return "He-normal kernels (fan-in kh x kw x c_in), uniform dense, BN ones and zeros"


@check
def aot_compiled_steps_reduce_the_loss() -> str:
    trainer = _trainer()
    seconds = trainer.compile(*_batch())
    assert seconds > 0 and trainer.compile_method == "aot"
    losses = _losses(trainer, 15, lr=0.1)
    assert losses[-1] < 0.7 * losses[0], f"losses {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert trainer._train_jit._cache_size() == 0, "jit traced a step beside the AOT one"
    return f"compile {seconds:.1f} s; loss {losses[0]:.3f} -> {losses[-1]:.3f} in 15 steps"


@check
def evaluation_changes_nothing_and_counts_correctly() -> str:
    images, labels = _batch()
    trainer = _trainer(dropout=0.3)
    _losses(trainer, 1, lr=0.05)
    before = trainer.export_weights()
    seen = {}
    for bn in ("running", "batch"):
        first, second = trainer.eval_step(images, labels, bn), trainer.eval_step(images, labels, bn)
        assert first == second, f"{bn}: {first} then {second}: dropout at evaluation?"
        assert 0 <= first[1] <= len(labels) and first[0] > 0, f"{bn}: {first}"
        seen[bn] = first
    assert seen["running"][0] != seen["batch"][0], "eval_bn batch made no difference"
    after = trainer.export_weights()
    changed = [name for name in before if not np.array_equal(before[name], after[name])]
    assert not changed, f"evaluation changed {changed}"
    return f"loss, correct: running {seen['running']}, batch {seen['batch']}"


@check
def a_smaller_last_eval_batch_is_evaluated_whole() -> str:
    images, labels = _batch()
    trainer = _trainer()
    loss, correct = trainer.eval_step(images, labels)
    parts = [trainer.eval_step(images[s], labels[s]) for s in (slice(20), slice(20, 32))]
    assert sum(c for _, c in parts) == correct, f"{parts}, whole {loss, correct}"
    assert abs(sum(x for x, _ in parts) / loss - 1) < 1e-4, f"{parts}, whole {loss, correct}"
    return f"32 images = 20 + 12: loss {loss:.3f}, {correct} correct"


@check
def weights_round_trip_between_trainers() -> str:
    source = _trainer(seed=1).export_weights()
    target = _trainer(seed=2)
    target.import_weights(source)
    for name, value in target.export_weights().items():
        assert np.array_equal(value, source[name]), name
    return f"{len(source)} tensors unchanged"


@check
def dropout_masks_change_with_the_step() -> str:
    trainer = _trainer(dropout=0.3)
    losses = _losses(trainer, 2, lr=0.0)  # at lr 0 only the masks can change the loss
    assert losses[0] != losses[1], f"losses {losses}"
    return f"losses at lr 0: {losses}"


@check
def optimizers_step_as_torch_does() -> str:
    _need_torch()
    import torch

    from backends import trax_backend
    from harness import config as cfg

    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 4)).astype(np.float32)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(3)]
    for optimizer in ("sgd", "adam"):
        ours = _trax_steps(trax_backend, _config(optimizer=optimizer), start, grads)
        weight = torch.nn.Parameter(torch.from_numpy(start.copy()))
        reference = _torch_optimizer(torch, cfg, _config(optimizer=optimizer), weight)
        for grad in grads:
            weight.grad = torch.from_numpy(grad)
            reference.step()
        np.testing.assert_allclose(ours, weight.detach().numpy(), rtol=1e-6, atol=1e-6)
    return "SGD (coupled L2, Nesterov) and Adam: 3 steps within 1e-6 of torch"


def _trax_steps(trax_backend, config, start, grads):
    from trax.fastmath import numpy as jnp

    from harness import config as cfg

    optimizer = trax_backend._optimizer(config)
    slots, params = optimizer.tree_init((jnp.asarray(start),))
    weights = (jnp.asarray(start),)
    l2 = cfg.SGD_WEIGHT_DECAY if config.optimizer == "sgd" else 0.0
    for step, grad in enumerate(grads):
        grad = (jnp.asarray(grad) + l2 * weights[0],)
        weights, slots, _ = optimizer.tree_update(step, grad, weights, slots, params, False)
    return np.asarray(weights[0])


def _torch_optimizer(torch, cfg, config, weight):
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            [weight],
            lr=config.base_lr,
            momentum=cfg.SGD_MOMENTUM,
            nesterov=True,
            weight_decay=cfg.SGD_WEIGHT_DECAY,
        )
    wd = cfg.ADAM_WEIGHT_DECAY_RATE / config.base_lr
    return torch.optim.AdamW([weight], lr=config.base_lr, eps=cfg.ADAM_EPS, weight_decay=wd)


def _parity(depth: int, width: int, dropout: float = 0.0):
    _need_torch()
    from harness import parity
    from harness.spec import WRNSpec

    return parity.run_parity(["torch", "trax"], WRNSpec(depth, width, dropout))


@check
def parity_with_torch_on_jax() -> str:
    report = _parity(10, 2, dropout=0.3)
    assert report.passed, report.table()
    worst = max(report.differences["trax"], key=lambda d: d.of_allowed)
    return f"WRN-10-2: worst {worst.quantity} at {worst.of_allowed:.2g} of the allowance"


@check
def parity_catches_trax_own_batch_norm_variance() -> str:
    from backends import trax_backend

    saved = trax_backend._unbiased
    trax_backend._unbiased = lambda var, count: var  # tl.BatchNorm tracks the biased variance
    try:
        report = _parity(10, 1)
    finally:
        trax_backend._unbiased = saved
    rows = {d.quantity: d for d in report.differences["trax"]}
    caught = rows["step: BN running var"]
    assert not caught.passed and caught.of_allowed > 10, report.table()
    return f"biased running variance: {caught.of_allowed:.0f} times the allowance"


@check
def zoo_trains_evaluates_both_ways_and_has_no_canonical_weights() -> str:
    trainer = _trainer(model="trax-zoo", optimizer="adam")
    losses = _losses(trainer, 3, lr=0.01)
    images, labels = _batch()
    running, batch = (
        trainer.eval_step(images, labels, "running"),
        trainer.eval_step(images, labels, "batch"),
    )
    assert running != batch, "eval_bn batch made no difference"
    try:
        trainer.export_weights()
    except NotImplementedError:
        pass
    else:
        raise AssertionError("trax-zoo exported canonical weights")
    try:
        _trainer(model="trax-zoo", dropout=0.3)
    except ValueError:
        pass
    else:
        raise AssertionError("trax-zoo accepted dropout")
    return f"losses {losses}; eval running {running}, batch {batch}"


@check
def versions_report_import_time_and_math_backend() -> str:
    from backends import trax_backend

    assert _trainer().device_name()
    versions = trax_backend.versions()
    assert all(isinstance(v, str) for v in versions.values()), versions
    assert float(versions["trax_import_s"]) > 0 and versions["trax_math"] == "jax", versions
    return json.dumps(versions)


@check
def tensorflow_numpy_steps_reduce_the_loss_and_time_the_first_step() -> str:
    trainer = _trainer(math=TF)
    assert trainer.compile(*_batch()) is None and trainer.compile_method == "first_step"
    losses = _losses(trainer, 12, lr=0.1)
    assert losses[-1] < 0.8 * losses[0], f"losses {losses[0]:.3f} -> {losses[-1]:.3f}"
    images, labels = _batch()
    before = trainer.export_weights()
    running, batch = (
        trainer.eval_step(images, labels, "running"),
        trainer.eval_step(images, labels, "batch"),
    )
    after = trainer.export_weights()
    assert all(np.array_equal(before[n], after[n]) for n in before), "evaluation changed weights"
    assert running != batch
    return f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; eval running {running}, batch {batch}"


@check
def parity_with_torch_on_tensorflow_numpy() -> str:
    with _default_math(TF):
        report = _parity(10, 1)
    assert report.passed, report.table()
    worst = max(report.differences["trax"], key=lambda d: d.of_allowed)
    return f"WRN-10-1: worst {worst.quantity} at {worst.of_allowed:.2g} of the allowance"


@check
def zoo_trains_on_tensorflow_numpy() -> str:
    trainer = _trainer(math=TF, model="trax-zoo", optimizer="adam")
    losses = _losses(trainer, 3, lr=0.01)
    images, labels = _batch()
    return f"losses {losses}; eval {trainer.eval_step(images, labels, 'batch')}"


@check
def zoo_step_is_the_tutorial_loops_step() -> str:
    """From the same weights and batch, a harness trax-zoo step is a step of the tutorial's Loop.

    The tutorial's model, loss, optimizer and Loop (benchmarks/trax_tutorial.py
    builds them the same way), on TensorFlow-NumPy, against the harness's own
    step: same loss, weights and batch-norm state after the step. The Loop
    counts its first step as 1 (Adam's bias correction then uses 2), the
    harness as 0; the harness's count is set to 1 so both correct alike.
    """
    import itertools

    import trax
    from trax import fastmath
    from trax import layers as tl
    from trax.fastmath import numpy as jnp
    from trax.supervised import training

    trainer = _trainer(math=TF, model="trax-zoo", optimizer="adam", depth=22, normalize=False)
    images, labels = _batch(16)
    batch = (images, labels.astype(np.int64), np.ones(len(labels), np.float32))
    task = training.TrainTask(
        labeled_data=itertools.repeat(batch),
        loss_layer=tl.CrossEntropyLoss(),
        optimizer=trax.optimizers.Adam(0.01),
        n_steps_per_checkpoint=1000,
    )
    loop = training.Loop(tl.Serial(trax.models.WideResnet(), tl.LogSoftmax()), task)
    start = trainer.train_state
    loop.update_weights_and_state(weights=(start.weights, ()), state=(start.state, ()))
    trainer.train_state = start._replace(step=jnp.asarray(1, dtype=np.int32))

    loss = trainer.to_float(trainer.train_step(images, labels, 0.01))
    trainer.sync()
    # What Loop.run does for its first step (its history stays empty without an output_dir).
    stepper = loop._trainer_per_task[0]
    loop_loss, _ = stepper.one_step(batch, loop.new_rng(), step=1, learning_rate=0.01)
    loop_loss = float(np.asarray(loop_loss))
    stepped = stepper.accelerated_model_with_loss
    assert abs(loss - loop_loss) < 1e-5 * loop_loss, (loss, loop_loss)
    worst = {}
    # Weights: 5e-4 of the lr, the size of one Adam step (a wrong constant, loss or batch
    # norm moves them by 1e-4 to 1e-2); float32 rounding of the gradient, whose sums
    # TensorFlow orders differently from run to run, reaches 1.5e-6 in the shortcut
    # convolution on raw 0-255 pixels. Batch-norm state: 1e-4 relative.
    for name, mine, theirs, scale in (
        ("weights", trainer.train_state.weights, stepped.weights[0][0], 5e-4 * 0.01),
        ("state", trainer.train_state.state, stepped.state[0][0], None),
    ):
        pairs = list(zip(fastmath.tree_flatten(mine), fastmath.tree_flatten(theirs), strict=True))
        assert len(pairs) > 10, (name, len(pairs))
        diffs = []
        for a, b in pairs:
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            assert a.shape == b.shape, (name, a.shape, b.shape)
            allowed = scale or 1e-4 * max(1.0, float(np.abs(b).max()))
            diffs.append(float(np.abs(a - b).max()) / allowed)
        worst[name] = max(diffs)
        assert worst[name] <= 1, (name, worst[name], "of the allowed difference")
    changed = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(
            fastmath.tree_flatten(start.weights),
            fastmath.tree_flatten(trainer.train_state.weights),
            strict=True,
        )
    )
    assert changed > 1e-3, changed  # the step moved the weights: the comparison is not vacuous
    return (
        f"loss {loss:.5f} vs Loop {loop_loss:.5f}; worst weight and state differences "
        f"{worst['weights']:.2g} and {worst['state']:.2g} of the allowance"
    )


@check
def tutorial_code_runs_on_the_real_files_and_reports_both_ways() -> str:
    """benchmarks/trax_tutorial.py: the tutorial's Loop on a few real images."""
    make = REPO.parent / "shared" / "tools" / "make_cifar10.py"
    if not make.exists():
        raise Skip("no ../shared: the real CIFAR-10 files are needed")
    from benchmarks import trax_tutorial

    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, str(make), folder, "--train", "500", "--test", "100"],
            check=True,
            capture_output=True,
        )
        out = Path(folder) / "figures.json"
        args = ["--data-dir", folder, "--steps", "2", "--test-size", "70", "--json", str(out)]
        report = trax_tutorial.main(args)
        assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["trax_math"] == TF and report["test_images"] == 70, report
    # The Loop evaluates at step 1 (then every 1000 steps): 20 batches of 64.
    assert [step for step, _ in report["loop_eval_accuracy"]] == [1], report
    for bn in ("batch", "running"):
        acc, loss = report[f"test_acc_{bn}_bn"], report[f"test_loss_{bn}_bn"]
        assert 0 <= acc <= 1 and np.isfinite(loss) and loss > 0, (bn, acc, loss)
        assert abs(acc * 70 - round(acc * 70)) < 1e-9, acc  # a count of whole images
    return ", ".join(
        f"{k} {report[k]:.3f}" for k in report if k.startswith("test_a") or k.startswith("test_l")
    )


# ---------------------------------------------------------------- the subprocess


def _write(path: Path, report: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(report, indent=1))
    partial.replace(path)


def _run_check(fn: Callable[[], str]) -> dict:
    began = time.perf_counter()
    skipped = False
    try:
        message, ok = fn(), True
    except Skip as reason:
        message, ok, skipped = str(reason), True, True
    except Exception:
        message, ok = traceback.format_exc(limit=-4), False
    seconds = round(time.perf_counter() - began, 1)
    return {"ok": ok, "skipped": skipped, "message": message, "seconds": seconds}


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    report: dict = {"done": False, "checks": {}}
    began = time.perf_counter()
    from backends import trax_backend

    report["import_s"] = round(time.perf_counter() - began, 1)
    report["trax_import_s"] = round(trax_backend.TRAX_IMPORT_S, 1)
    _write(path, report)
    for name, fn in CHECKS.items():
        report["checks"][name] = _run_check(fn)
        print(name, report["checks"][name], flush=True)
        _write(path, report)
    report["done"] = True
    _write(path, report)
    return 0 if all(c["ok"] for c in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
