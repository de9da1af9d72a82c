import dataclasses
import json
import os

import pytest

from harness import registry, runner, store
from harness.config import RunConfig
from harness.row import column_docs
from tests import numpy_backend

registry.register(numpy_backend.INFO)


def numpy_config(**settings) -> RunConfig:
    values = dict(
        backend="numpy-test",
        model="linear",
        depth=10,
        width=1,
        dataset="synthetic",
        train_size=2000,
        test_size=500,
        batch_size=50,
        steps=60,
        eval_every=20,
        warmup_steps=2,
    )
    values.update(settings)
    return RunConfig(**values)


def test_a_run_fills_every_measured_column():
    row = runner.run(numpy_config(), progress=False)
    assert row["status"] == "ok", row["error"]
    assert set(column_docs()) == set(row)
    unset = {"epochs", "data_dir", "train_size", "test_size", "threads", "lr", "omp_num_threads"}
    not_applicable = {"error", "peak_device_memory_bytes", "git_commit", "git_dirty", "trax_math"}
    bench_only = {"achieved_tflops", "matmul_peak_tflops", "peak_fraction", "vendor_peak_tflops"}
    both_bn_only = {"final_test_acc_batch_bn", "final_test_loss_batch_bn", "best_test_acc_batch_bn"}
    allowed_null = unset | not_applicable | bench_only | both_bn_only
    empty = {name for name, value in row.items() if value is None} - allowed_null
    assert not empty
    assert row["steps_done"] == 60 and row["timed_steps"] == 60 - 1 - 2
    assert [point["step"] for point in row["curve"]] == [20, 40, 60]
    assert row["final_test_acc"] == row["curve"][-1]["test_acc"]
    assert row["best_test_acc"] == max(p["test_acc"] for p in row["curve"])
    assert row["compile_method"] == "first_step"
    assert row["images_per_sec"] == pytest.approx(50 / (row["step_time_ms_median"] / 1e3))
    assert row["data_source"] == "synthetic" and row["train_images"] == 2000


def test_the_linear_model_learns_the_synthetic_classes():
    row = runner.run(numpy_config(lr=0.5, steps=200, eval_every=200), progress=False)
    assert row["final_test_acc"] > 0.5


@pytest.mark.parametrize(
    ("model", "status", "message"),
    [
        ("raise", "crashed", "RuntimeError: numpy-test backend failing on purpose"),
        ("oom", "oom", "MemoryError"),
        ("nan", "diverged", "training loss became nan at step 4"),
    ],
)
def test_a_failed_run_is_a_row_with_its_status_and_error(model, status, message):
    row = runner.run(numpy_config(model=model), progress=False)
    assert row["status"] == status
    assert message in row["error"]
    assert row["steps_done"] == 3
    json.dumps(row, allow_nan=False)  # strict JSON even after a NaN


def test_rows_are_written_atomically_and_load_as_a_dataframe(tmp_path):
    rows = [
        runner.run(numpy_config(seed=seed, steps=10, eval_every=10), progress=False)
        for seed in (0, 1)
    ]
    paths = [store.write_row(tmp_path, row) for row in rows]
    assert all(path.parent == tmp_path / "rows" for path in paths)
    assert not [p for p in os.listdir(tmp_path / "rows") if p.startswith(".tmp")]
    frame = store.load_rows(tmp_path)
    assert list(frame["seed"]) == [0, 1]
    assert frame.loc[0, "curve"][0]["step"] == 10


def test_an_unreadable_row_is_reported_and_skipped(tmp_path, caplog):
    store.write_row(tmp_path, runner.run(numpy_config(steps=5, eval_every=5), progress=False))
    (tmp_path / "rows" / "broken.json").write_text("{not json")
    assert len(store.load_rows(tmp_path)) == 1
    assert "broken.json" in caplog.text


def test_a_spec_model_with_the_wrong_parameter_count_is_a_crash():
    registry.register(dataclasses.replace(numpy_backend.INFO, name="numpy-spec", models=("spec",)))
    row = runner.run(numpy_config(backend="numpy-spec", model="spec"), progress=False)
    assert row["status"] == "crashed"
    assert "backend numpy-spec built 30,730 parameters; the spec has 77,850" in row["error"]


@pytest.mark.parametrize("mode", ["bench", "bench-infer"])
def test_bench_modes_time_steps_on_a_resident_batch_and_compare_with_the_matmul_peak(mode):
    row = runner.run(numpy_config(mode=mode, steps=12, warmup_steps=2), progress=False)
    assert row["status"] == "ok", row["error"]
    assert row["steps_done"] == 12 and row["timed_steps"] == 9
    assert row["curve"] is None and row["final_test_acc"] is None  # no evaluation in a benchmark
    per_image = row["forward_flops"] * (1 if mode == "bench-infer" else 3)
    expected = per_image * 50 / (row["step_time_ms_median"] / 1e3) / 1e12
    assert row["achieved_tflops"] == pytest.approx(expected)
    assert row["matmul_peak_tflops"] > 0
    assert row["peak_fraction"] == pytest.approx(row["achieved_tflops"] / row["matmul_peak_tflops"])


def test_eval_bn_both_evaluates_the_same_weights_both_ways():
    pytest.importorskip("torch")
    config = RunConfig(
        depth=10,
        width=1,
        dataset="synthetic",
        train_size=256,
        test_size=100,
        batch_size=32,
        steps=6,
        eval_every=3,
        eval_bn="both",
        warmup_steps=1,
    )
    row = runner.run(config, progress=False)
    assert row["status"] == "ok", row["error"]
    assert [sorted(p) for p in row["curve"]][0] == sorted(
        [
            "step",
            "epoch",
            "lr",
            "train_loss",
            "test_loss",
            "test_acc",
            "elapsed_s",
            "test_loss_batch_bn",
            "test_acc_batch_bn",
        ]
    )
    last = row["curve"][-1]
    assert row["final_test_acc_batch_bn"] == last["test_acc_batch_bn"]
    assert row["final_test_loss_batch_bn"] != row["final_test_loss"]  # the two protocols differ


def test_a_model_the_spec_does_not_describe_gets_no_flop_figures():
    # As Trax's zoo WideResnet: its layers are not the spec's, so neither are its FLOPs.
    own = dataclasses.replace(numpy_backend.INFO, name="numpy-own-model", spec_flops_models=())
    registry.register(own)
    row = runner.run(numpy_config(backend=own.name, mode="bench", steps=10), progress=False)
    assert row["status"] == "ok", row["error"]
    assert row["step_time_ms_median"] > 0 and row["matmul_peak_tflops"] > 0
    assert row["forward_flops"] is None
    assert row["achieved_tflops"] is None and row["peak_fraction"] is None
    spec_like = runner.run(numpy_config(mode="bench", steps=10), progress=False)
    assert spec_like["achieved_tflops"] > 0 and spec_like["forward_flops"] > 0
