"""One row per run: its configuration, what it measured, and where it ran.

A row is flat JSON. Its columns are the fields of :class:`RunConfig` (under
their own names), the fields of :class:`Measured` below, and the metadata
columns in :data:`METADATA_COLUMNS`. :func:`column_docs` describes each one;
``results/README.md`` is generated from it.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from harness.config import RunConfig

STATUSES = ("ok", "diverged", "oom", "timeout", "crashed", "interrupted")


def _doc(text: str, default=None):
    return field(default=default, metadata={"doc": text})


@dataclass
class Measured:
    """What a run measured; None where it did not get that far."""

    status: str = _doc(
        "ok, diverged (non-finite loss), oom, timeout, crashed or interrupted", "crashed"
    )
    error: str | None = _doc("the last lines of the error, for a failed run")
    steps_done: int = _doc("training steps completed", 0)
    data_source: str | None = _doc(
        "where the images came from: cifar10:py:official (every file's md5 is the published "
        "one), cifar10:py:unofficial (the files differ from the official ones, e.g. a "
        "re-encoded copy), cifar10:bin (no published sums), tfds or synthetic"
    )
    train_images: int | None = _doc("images in the training split used")
    test_images: int | None = _doc("images in the test split evaluated")
    total_steps: int | None = _doc(
        "steps the run was to take (from steps, or epochs x steps per epoch)"
    )
    eval_interval: int | None = _doc("steps between evaluations")
    final_test_acc: float | None = _doc("test accuracy at the end, on the whole test split")
    final_test_loss: float | None = _doc("mean test cross-entropy at the end")
    best_test_acc: float | None = _doc("highest test accuracy over the evaluations")
    best_test_loss: float | None = _doc("lowest mean test cross-entropy over the evaluations")
    final_train_loss: float | None = _doc("mean training loss over the last evaluation interval")
    final_test_acc_batch_bn: float | None = _doc(
        "eval_bn both: final test accuracy with batch norm normalising by each evaluation "
        "batch's own statistics (the other columns use the running averages)"
    )
    final_test_loss_batch_bn: float | None = _doc("eval_bn both: the same for the mean test loss")
    best_test_acc_batch_bn: float | None = _doc("eval_bn both: the highest such accuracy")
    curve: list = _doc(
        "learning curve, one point per evaluation: step, epoch, lr, train_loss, test_loss, "
        "test_acc, elapsed_s (and test_loss_batch_bn, test_acc_batch_bn with eval_bn both)",
        None,
    )
    step_time_ms_median: float | None = _doc(
        "median wall time of a training step, device synchronised"
    )
    step_time_ms_iqr: float | None = _doc("interquartile range of the step time")
    step_time_ms_mean: float | None = _doc("mean step time")
    step_time_ms_min: float | None = _doc("fastest step")
    timed_steps: int | None = _doc(
        "steps in the step-time statistics (all but the first and the warm-up)"
    )
    images_per_sec: float | None = _doc("batch_size / median step time")
    compile_time_s: float | None = _doc("compilation time; see compile_method")
    compile_method: str | None = _doc(
        "first_step: wall time of the first step (tracing, compilation and one step); "
        "aot: ahead-of-time lower and compile of the train step alone"
    )
    achieved_tflops: float | None = _doc(
        "bench modes: the spec's FLOPs per step (3 x forward for a train step) / median step time, in "
        "TFLOP/s; null for a backend's own model"
    )
    matmul_peak_tflops: float | None = _doc(
        "bench modes: TFLOP/s of large square matrix products in the same framework, device and "
        "precision, measured in the same process"
    )
    peak_fraction: float | None = _doc("bench modes: achieved_tflops / matmul_peak_tflops")
    vendor_peak_tflops: float | None = _doc(
        "bench modes: the vendor's dense peak for the device and precision"
    )
    data_wait_s: float | None = _doc("time the training loop waited for the data pipeline")
    train_time_s: float | None = _doc("wall time of the training loop, evaluations excluded")
    eval_time_s: float | None = _doc("wall time of all evaluations")
    wall_time_s: float | None = _doc("wall time of the whole run, loading and set-up included")
    peak_device_memory_bytes: int | None = _doc(
        "peak memory allocated on the accelerator; null on the CPU, where no framework reports it"
    )
    peak_host_rss_bytes: int | None = _doc(
        "peak resident memory of the run's process (the data set included)"
    )
    param_count: int | None = _doc("trainable parameters of the model the backend built")
    spec_param_count: int | None = _doc("trainable parameters the spec computes")
    forward_flops: int | None = _doc(
        "forward FLOPs per image from the spec (2 x MACs of conv and dense); null for a backend's "
        "own model, which the spec does not describe"
    )
    device_name: str | None = _doc("the device as the framework names it (the CPU model for cpu)")
    framework_version: str | None = _doc("version of the backend's framework")
    versions: dict = _doc("versions of every library the backend uses", None)

    def record_failure(self, status: str, error: str | None) -> None:
        self.status, self.error = status, error


IDENTITY_COLUMNS = {
    "run_id": "unique id of this row: start time, config hash and a random suffix",
    "config_hash": "hash of the resolved configuration; equal for runs that compute the same thing",
    "started_at": "UTC start time (ISO 8601)",
    "finished_at": "UTC end time (ISO 8601)",
}

METADATA_COLUMNS = {
    "hostname": "machine the run ran on",
    "platform": "operating system and kernel",
    "cpu_model": "CPU model",
    "cpu_count": "CPUs usable by the process",
    "python_version": "Python version",
    "numpy_version": "numpy version",
    "omp_num_threads": "OMP_NUM_THREADS of the run's process, where set (Ray sets it to a task's CPUs)",
    "load_avg_1m": "the machine's 1-minute load average when the run ended; above cpu_count "
    "(plus the run's own load) other work competed for the CPUs and the times are suspect",
    "git_commit": "commit of the harness",
    "git_dirty": "true if tracked files differed from the commit",
}


def column_docs() -> dict[str, str]:
    """Every column of a row, in row order, with its description."""
    docs = dict(IDENTITY_COLUMNS)
    for f in dataclasses.fields(RunConfig):
        docs[f.name] = f.metadata["help"]
    docs["lr"] = "initial learning rate (resolved)"
    for f in dataclasses.fields(Measured):
        docs[f.name] = f.metadata["doc"]
    docs.update(METADATA_COLUMNS)
    return docs


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_run_id(config: RunConfig) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{config.config_hash[:8]}-{secrets.token_hex(3)}"


def make_row(
    run_id: str, config: RunConfig, started_at: str, measured: Measured, metadata: dict
) -> dict:
    row = {
        "run_id": run_id,
        "config_hash": config.config_hash,
        "started_at": started_at,
        "finished_at": now_iso(),
    }
    row.update(config.to_dict())
    row["lr"] = config.base_lr
    row.update(dataclasses.asdict(measured))
    row.update(metadata)
    return {key: _finite_or_none(value) for key, value in row.items()}


def _finite_or_none(value):
    """NaN and infinities become null, so that every row is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value
