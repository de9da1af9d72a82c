"""The command line end to end, in real processes."""

import csv
import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.conftest import NUMPY_BACKEND_ENV, REPO, SMALL_SYNTHETIC, wrnbench

NUMPY_BACKEND = NUMPY_BACKEND_ENV
QUICK_RUN = [
    "--backend",
    "numpy-test",
    "--model",
    "linear",
    "--depth",
    "10",
    "--width",
    "1",
    *SMALL_SYNTHETIC,
    "--steps",
    "20",
    "--eval-every",
    "10",
    "--no-progress",
]


def test_installed_console_script_prints_the_spec_with_backend_counts():
    script = Path(sys.executable).parent / "wrnbench"
    if not script.exists():
        pytest.skip("the wrnbench console script is not installed in this environment")
    done = subprocess.run(
        [
            str(script),
            "spec",
            "--depth",
            "16",
            "--width",
            "4",
            "--dropout",
            "0.3",
            "--backends",
            "torch",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "parameters: 2,748,890" in done.stdout
    assert "backend torch: 2,748,890 parameters, equal to the spec" in done.stdout
    assert "group3.block2.dropout" in done.stdout


def test_spec_json_is_machine_readable():
    done = wrnbench("spec", "--depth", "28", "--width", "10", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["spec"]["param_count"] == 36_479_194
    assert sum(layer["params"] for layer in data["layers"]) == 36_479_194


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["spec", "--depth", "15", "--width", "4"], "depth must be 6n+4 with n >= 1"),
        (["spec", "--depth", "abc", "--width", "0"], "width must be a whole number >= 1; got 0"),
        (
            ["spec", "--depth", "16", "--width", "4", "--dropout", "1.0"],
            "dropout must be a rate in [0, 1); got 1",
        ),
        (
            ["spec", "--depth", "16", "--width", "4", "--backends", "mxnet"],
            "unknown backend 'mxnet'",
        ),
        (["run", "--depth", "15", "--optimizer", "rmsprop"], "optimizer must be one of sgd, adam"),
        (["run", "--steps", "ten"], "steps must be a whole number; got 'ten'"),
    ],
)
def test_bad_input_exits_2_with_what_is_allowed(args, message):
    done = wrnbench(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_cuda_on_a_machine_without_one_is_refused_without_a_row(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = wrnbench(
        "run",
        "--device",
        "cuda",
        "--dataset",
        "synthetic",
        "--steps",
        "1",
        "--depth",
        "10",
        "--width",
        "1",
        "--results",
        str(tmp_path),
    )
    assert done.returncode == 2
    assert "torch sees no CUDA device" in done.stderr
    assert not (tmp_path / "rows").exists()


def test_missing_data_dir_is_refused_without_a_row(tmp_path):
    done = wrnbench(
        "run",
        "--data-dir",
        str(tmp_path / "nowhere"),
        "--results",
        str(tmp_path / "r"),
        "--steps",
        "1",
    )
    assert done.returncode == 2
    assert f"{tmp_path / 'nowhere'}: no such folder" in done.stderr
    assert not (tmp_path / "r" / "rows").exists()


def test_run_rows_and_report_end_to_end(tmp_path):
    results = str(tmp_path / "results")
    for seed in ("0", "1"):
        done = wrnbench("run", *QUICK_RUN, "--seed", seed, "--results", results, env=NUMPY_BACKEND)
        assert done.returncode == 0, done.stderr
        assert "status: ok" in done.stdout
    failed = wrnbench(
        "run", *QUICK_RUN, "--model", "raise", "--results", results, env=NUMPY_BACKEND
    )
    assert failed.returncode == 1
    assert "numpy-test backend failing on purpose" in failed.stderr

    as_json = json.loads(wrnbench("rows", "--json", "--results", results).stdout)
    assert sorted(row["status"] for row in as_json) == ["crashed", "ok", "ok"]
    as_csv = list(csv.DictReader(io.StringIO(wrnbench("rows", "--results", results).stdout)))
    assert len(as_csv) == 3 and json.loads(as_csv[0]["curve"])[0]["step"] == 10

    done = wrnbench("report", "--results", results)
    assert done.returncode == 0, done.stderr
    accuracy = list(csv.DictReader((tmp_path / "results" / "tables" / "accuracy.csv").open()))
    assert [(row["variant"], row["seeds"]) for row in accuracy] == [
        ("numpy-test (model linear)", "2")
    ]
    assert "crashed" in (tmp_path / "results" / "tables" / "failures.csv").read_text()
    page = (tmp_path / "results" / "report.md").read_text()
    assert "numpy-test (model linear)" in page and "figures/learning-curves.png" in page
    readme = (tmp_path / "results" / "README.md").read_text()
    assert "`step_time_ms_median`" in readme and "`config_hash`" in readme


def test_progress_is_shown_on_a_terminal(tmp_path):
    args = [a for a in QUICK_RUN if a != "--no-progress"]
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "run",
            *args,
            "--steps",
            "200",
            "--results",
            str(tmp_path),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env={**os.environ, **NUMPY_BACKEND},
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=120) == 0
    text = output.decode(errors="replace")
    assert "numpy-test WRN-10-1" in text
    assert "step/s" in text or "s/step" in text


def test_bench_runs_repeats_in_fresh_processes_and_prints_the_speed_table(tmp_path):
    done = wrnbench(
        "bench",
        "backend=numpy-test",
        "--model",
        "linear",
        "--repeats",
        "2",
        "--steps",
        "8",
        "--warmup-steps",
        "2",
        "--no-progress",
        "--results",
        str(tmp_path),
        env={**NUMPY_BACKEND, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(wrnbench("rows", "--json", "--results", str(tmp_path)).stdout)
    assert sorted((r["mode"], r["repeat"], r["dataset"]) for r in rows) == [
        ("bench", 0, "synthetic"),
        ("bench", 1, "synthetic"),
    ]
    assert len({r["config_hash"] for r in rows}) == 2
    assert "peak_fraction" in done.stdout and "numpy-test (model linear)" in done.stdout
