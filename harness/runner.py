"""Run one configuration: train, evaluate, time, and return its row.

What the step time covers: the host-to-device copy of a ready batch, forward,
backward and optimizer update, ending when the device has finished
(``Trainer.sync``). It leaves out waiting for the data pipeline (reported as
``data_wait_s``), evaluations, logging, the first step (reported as compile
time) and ``warmup_steps`` steps after it.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field

from harness import metadata, registry
from harness.backend import DeviceUnavailable, Trainer
from harness.config import RunConfig
from harness.data import DataError, Dataset, TrainBatches, eval_batches, load_dataset, synthetic
from harness.hardware import vendor_peak_tflops
from harness.row import Measured, make_row, new_run_id, now_iso
from harness.timing import TimeStats

log = logging.getLogger(__name__)

ERROR_LINES = 20
DEFAULT_BENCH_STEPS = 30


class Diverged(RuntimeError):
    """The training loss stopped being finite."""


@dataclass
class _Progress:
    """Running totals of the training loop."""

    step_seconds: list[float] = field(default_factory=list)
    interval_losses: list[float] = field(default_factory=list)
    train_time_s: float = 0.0
    eval_time_s: float = 0.0


def run(config: RunConfig, progress: bool = True) -> dict:
    """Train and evaluate one configuration and return its row, failed or not.

    Every failure of the run itself becomes a row with its status and error; a
    KeyboardInterrupt becomes status ``interrupted``. Bad input found before
    training (data that cannot be read, a framework or device that is not
    there) raises instead, as no run took place.
    """
    run_id, started_at, began = new_run_id(config), now_iso(), time.perf_counter()
    measured = Measured(spec_param_count=config.spec.param_count, forward_flops=_flops(config))
    trainer: Trainer | None = None
    try:
        # The framework first: its imports must precede a data source's TensorFlow.
        backend = registry.load(config.backend)
        dataset = None
        if config.mode == "train":
            dataset = load_dataset(
                config.dataset, config.data_dir, config.train_size, config.test_size
            )
        trainer = backend.create_trainer(config)
        # After the trainer: a backend may report choices it made (Trax's math backend).
        measured.versions = backend.versions()
        measured.framework_version = next(iter(measured.versions.values()), None)
        measured.device_name = _device_name(config, trainer)
        measured.param_count = trainer.param_count()
        if config.model == "spec" and measured.param_count != measured.spec_param_count:
            raise RuntimeError(
                f"backend {config.backend} built {measured.param_count:,} parameters; "
                f"the spec has {measured.spec_param_count:,}"
            )
        if dataset is None:
            _bench(config, trainer, measured)
        else:
            _train(config, trainer, dataset, measured, progress)
        measured.status = "ok"
    except (DataError, registry.BackendUnavailable, DeviceUnavailable):
        raise  # bad input, not a failed run: the caller reports it and stores no row
    except Diverged as err:
        measured.record_failure("diverged", str(err))
    except KeyboardInterrupt:
        measured.record_failure("interrupted", "stopped by the user (KeyboardInterrupt)")
    except BaseException as err:  # every failure becomes a row, never a lost run
        status = "oom" if trainer is not None and trainer.is_out_of_memory(err) else "crashed"
        measured.record_failure(status, _error_tail())
        log.error("run %s failed (%s): %s", run_id, status, err)
    finally:
        if trainer is not None:
            measured.peak_device_memory_bytes = _safe(trainer.peak_device_memory_bytes)
            _safe(trainer.close)
        measured.peak_host_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        measured.wall_time_s = time.perf_counter() - began
    return make_row(run_id, config, started_at, measured, metadata.machine())


def _train(
    config: RunConfig, trainer: Trainer, dataset: Dataset, measured: Measured, show: bool
) -> None:
    total = config.total_steps(len(dataset.train))
    interval = config.eval_interval(total)
    measured.data_source = dataset.source
    measured.train_images, measured.test_images = len(dataset.train), len(dataset.test)
    measured.total_steps, measured.eval_interval = total, interval
    measured.curve = []
    batches = TrainBatches(
        dataset.train, config.batch_size, config.seed, config.augment, stop=total
    )
    totals = _Progress()
    bar = _progress_bar(total, show, f"{config.backend} {config.spec.name}")

    loop_began = time.perf_counter()
    try:
        for batch in batches:
            step = batch.step
            if step == 0:
                aot = trainer.compile(batch.images, batch.labels)
                if aot is not None:
                    measured.compile_time_s, measured.compile_method = aot, "aot"

            began = time.perf_counter()
            loss = trainer.train_step(batch.images, batch.labels, config.lr_at(step, total))
            trainer.sync()
            seconds = time.perf_counter() - began

            loss = trainer.to_float(loss)
            if not math.isfinite(loss):
                raise Diverged(f"training loss became {loss} at step {step + 1}")
            _record_step(config, measured, totals, step, seconds)
            totals.interval_losses.append(loss)
            measured.steps_done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", ms=f"{seconds * 1e3:.0f}", refresh=False)

            if measured.steps_done % interval == 0 or measured.steps_done == total:
                totals.train_time_s += time.perf_counter() - loop_began
                _evaluate(config, trainer, dataset, measured, totals, total)
                loop_began = time.perf_counter()
    finally:
        bar.close()
        measured.data_wait_s = batches.wait_s
        _summarize_steps(config, measured, totals)


def _bench(config: RunConfig, trainer: Trainer, measured: Measured) -> None:
    """Steps on one synthetic batch already on the device: the backend's speed alone."""
    inference = config.mode == "bench-infer"
    total = config.steps or DEFAULT_BENCH_STEPS
    split = synthetic(config.batch_size, 1).train
    images, labels = trainer.device_batch(split.images, split.labels)
    if not inference:
        aot = trainer.compile(split.images, split.labels)
        if aot is not None:
            measured.compile_time_s, measured.compile_method = aot, "aot"
    totals = _Progress()
    measured.total_steps = total
    for step in range(total):
        began = time.perf_counter()
        if inference:
            trainer.infer_step(images)
        else:
            loss = trainer.train_step(images, labels, config.lr_at(step, total))
        trainer.sync()
        _record_step(config, measured, totals, step, time.perf_counter() - began)
        measured.steps_done = step + 1
    if not inference and not math.isfinite(trainer.to_float(loss)):
        raise Diverged(f"training loss became {trainer.to_float(loss)} in the benchmark")
    _summarize_steps(config, measured, totals)
    _efficiency(config, trainer, measured, inference)


def _flops(config: RunConfig) -> int | None:
    """The spec's forward FLOPs per image; None for a backend's own model, which they don't describe."""
    return config.spec.forward_flops if _spec_flops_apply(config) else None


def _spec_flops_apply(config: RunConfig) -> bool:
    return registry.spec_flops_apply(config.backend, config.model)


def _efficiency(config: RunConfig, trainer: Trainer, measured: Measured, inference: bool) -> None:
    """Achieved FLOP/s from the spec, against the framework's measured matmul peak."""
    if measured.step_time_ms_median is None:
        return
    peak = trainer.matmul_flops()
    if peak:
        measured.matmul_peak_tflops = peak / 1e12
    measured.vendor_peak_tflops = vendor_peak_tflops(measured.device_name, config.precision)
    if not _spec_flops_apply(config):
        return  # the spec's FLOPs are not this model's
    per_image = config.spec.forward_flops if inference else config.spec.train_flops
    measured.achieved_tflops = (
        per_image * config.batch_size / (measured.step_time_ms_median / 1e3) / 1e12
    )
    if peak:
        measured.peak_fraction = measured.achieved_tflops / measured.matmul_peak_tflops


def _record_step(
    config: RunConfig, measured: Measured, totals: _Progress, step: int, seconds: float
) -> None:
    if step == 0 and measured.compile_method is None:
        measured.compile_time_s, measured.compile_method = seconds, "first_step"
    elif step > config.warmup_steps:
        totals.step_seconds.append(seconds)


def _evaluate(
    config: RunConfig,
    trainer: Trainer,
    dataset: Dataset,
    measured: Measured,
    totals: _Progress,
    total: int,
):
    began = time.perf_counter()
    primary = "batch" if config.eval_bn == "batch" else "running"
    loss, acc = _test_metrics(config, trainer, dataset, primary)
    step = measured.steps_done
    point = {
        "step": step,
        "epoch": step * config.batch_size / len(dataset.train),
        "lr": config.lr_at(step - 1, total),
        "train_loss": sum(totals.interval_losses) / len(totals.interval_losses),
        "test_loss": loss,
        "test_acc": acc,
    }
    if config.eval_bn == "both":  # the same weights, batch norm on each batch's own statistics
        point["test_loss_batch_bn"], point["test_acc_batch_bn"] = _test_metrics(
            config, trainer, dataset, "batch"
        )
    seconds = time.perf_counter() - began
    totals.eval_time_s += seconds
    point["elapsed_s"] = totals.train_time_s
    totals.interval_losses.clear()
    measured.curve.append(point)
    _record_evaluation(measured, point)
    log.info(
        "step %d/%d: train loss %.4f, test loss %.4f, test acc %.4f%s (eval %.1f s)",
        step,
        total,
        point["train_loss"],
        point["test_loss"],
        point["test_acc"],
        f", with batch statistics {point['test_acc_batch_bn']:.4f}"
        if "test_acc_batch_bn" in point
        else "",
        seconds,
    )


def _test_metrics(
    config: RunConfig, trainer: Trainer, dataset: Dataset, bn: str
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the whole test split."""
    loss_sum, correct = 0.0, 0
    for images, labels in eval_batches(dataset.test, config.eval_batch_size):
        batch_loss, batch_correct = trainer.eval_step(images, labels, bn)
        loss_sum, correct = loss_sum + batch_loss, correct + batch_correct
    return loss_sum / len(dataset.test), correct / len(dataset.test)


def _record_evaluation(measured: Measured, point: dict) -> None:
    curve = measured.curve
    measured.final_test_acc, measured.final_test_loss = point["test_acc"], point["test_loss"]
    measured.final_train_loss = point["train_loss"]
    measured.best_test_acc = max(p["test_acc"] for p in curve)
    measured.best_test_loss = min(p["test_loss"] for p in curve)
    if "test_acc_batch_bn" in point:
        measured.final_test_acc_batch_bn = point["test_acc_batch_bn"]
        measured.final_test_loss_batch_bn = point["test_loss_batch_bn"]
        measured.best_test_acc_batch_bn = max(p["test_acc_batch_bn"] for p in curve)


def _summarize_steps(config: RunConfig, measured: Measured, totals: _Progress) -> None:
    measured.train_time_s, measured.eval_time_s = totals.train_time_s, totals.eval_time_s
    stats = TimeStats.of(totals.step_seconds)
    if stats is None:
        return
    measured.timed_steps = stats.count
    measured.step_time_ms_median, measured.step_time_ms_iqr = stats.median_ms, stats.iqr_ms
    measured.step_time_ms_mean, measured.step_time_ms_min = stats.mean_ms, stats.min_ms
    measured.images_per_sec = config.batch_size / (stats.median_ms / 1e3)


def _device_name(config: RunConfig, trainer: Trainer) -> str:
    name = trainer.device_name()
    return metadata.cpu_model() if config.device == "cpu" else name


def _progress_bar(total: int, show: bool, label: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=label,
        unit="step",
        disable=not (show and sys.stderr.isatty()),
        leave=False,
    )


def _error_tail() -> str:
    lines = traceback.format_exc().rstrip().splitlines()
    return "\n".join(lines[-ERROR_LINES:])


def _safe(call):
    try:
        return call()
    except Exception:  # measurement after a failure must not hide the failure
        log.debug("ignored error in %s", call, exc_info=True)
        return None


def failed_row(
    config: RunConfig, status: str, error: str, started_at: str, wall_time_s: float
) -> dict:
    """The row of a run whose process ended without giving one (killed, timed out)."""
    measured = Measured(
        status=status,
        error=error,
        wall_time_s=wall_time_s,
        spec_param_count=config.spec.param_count,
        forward_flops=_flops(config),
    )
    return make_row(new_run_id(config), config, started_at, measured, metadata.machine())
