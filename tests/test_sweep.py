"""Sweeps in real processes: resume after SIGKILL, failures, concurrency, Ctrl-C.

The runs use the numpy test backend on synthetic data, so that each takes a
second or two and the sweep machinery, not a framework, is what is tested.
"""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from harness import registry
from harness.config import RunConfig
from harness.store import read_rows
from harness.sweep import Grid, SweepError, build_configs, interleave, load_grid, parse_axes
from tests.conftest import NUMPY_BACKEND_ENV, REPO, SMALL_SYNTHETIC, wrnbench

ENV = NUMPY_BACKEND_ENV
FIXED = [
    "--backend",
    "numpy-test",
    "--model",
    "linear",
    *SMALL_SYNTHETIC,
    "--eval-every",
    "10",
    "--no-progress",
]


def fixed_for(args) -> list[str]:
    """The fixed flags, less those the test's own arguments set."""
    named = {arg.split("=")[0] for arg in args if "=" in arg} | {
        a[2:] for a in args if a.startswith("--")
    }
    out, flags = [], iter(FIXED)
    for flag in flags:
        value = [] if flag == "--no-progress" else [next(flags)]
        if flag[2:] not in named:
            out += [flag, *value]
    return out


def sweep(results: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return wrnbench(
        "sweep", *args, *fixed_for(args), "--results", str(results), env=ENV, timeout=timeout
    )


def start_sweep(results: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "sweep",
            *args,
            *fixed_for(args),
            "--results",
            str(results),
        ],
        cwd=REPO,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_rows(
    results: Path, count: int, process: subprocess.Popen, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while len(list((results / "rows").glob("*.json"))) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sweep made no progress"
        time.sleep(0.1)


def statuses(results: Path) -> Counter:
    return Counter(row["status"] for row in read_rows(results))


def test_a_small_sweep_runs_every_point_then_skips_them_all(tmp_path):
    done = sweep(tmp_path, "depth=10,16", "seed=0,1", "--steps", "20")
    assert done.returncode == 0, done.stderr
    rows = read_rows(tmp_path)
    assert sorted((r["depth"], r["seed"]) for r in rows) == [(10, 0), (10, 1), (16, 0), (16, 1)]
    assert all(r["status"] == "ok" for r in rows)
    assert "sweep: 4 points; 4 ran" in done.stdout
    assert "[4 done, 0 failed, 0 left" in done.stderr

    again = sweep(tmp_path, "depth=10,16", "seed=0,1", "--steps", "20")
    assert again.returncode == 0
    assert "4 already done" in again.stdout
    assert len(read_rows(tmp_path)) == 4


def test_a_sweep_killed_with_sigkill_resumes_to_exactly_one_row_per_point(tmp_path):
    args = ["depth=10,16,22", "seed=0,1", "--steps", "150"]
    process = start_sweep(tmp_path, *args)
    wait_for_rows(tmp_path, 2, process)
    process.kill()  # SIGKILL: no handler runs, the run in flight dies with it
    process.communicate()
    interrupted = len(read_rows(tmp_path))
    assert 2 <= interrupted < 6

    time.sleep(1)  # a run orphaned by the kill would write its row within this time
    assert len(read_rows(tmp_path)) == interrupted

    done = sweep(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert f"{interrupted} already done" in done.stdout
    rows = read_rows(tmp_path)
    assert len(rows) == 6
    assert len({r["config_hash"] for r in rows}) == 6


def test_failed_runs_are_rows_and_the_sweep_goes_on(tmp_path):
    done = sweep(
        tmp_path,
        "model=linear,raise,nan,oom,hang",
        "seed=0",
        "--steps",
        "20",
        "--run-timeout",
        "15",
    )
    assert done.returncode == 1
    assert statuses(tmp_path) == Counter(ok=1, crashed=1, diverged=1, oom=1, timeout=1)
    errors = {r["model"]: r["error"] for r in read_rows(tmp_path)}
    assert "numpy-test backend failing on purpose" in errors["raise"]
    assert "training loss became nan" in errors["nan"]
    assert "killed after the 15 s time limit" in errors["hang"]
    assert "rerun them with --retry-failed" in done.stderr

    again = sweep(
        tmp_path,
        "model=linear,raise,nan,oom,hang",
        "seed=0",
        "--steps",
        "20",
        "--run-timeout",
        "15",
    )
    assert "5 already done" in again.stdout and again.returncode == 0

    retried = sweep(tmp_path, "model=linear,raise", "seed=0", "--steps", "20", "--retry-failed")
    assert "1 already done" in retried.stdout and retried.returncode == 1
    assert statuses(tmp_path)["crashed"] == 2


def test_a_process_that_dies_without_a_row_is_recorded_as_crashed(tmp_path):
    done = sweep(tmp_path, "model=linear,exit", "--steps", "10")
    assert done.returncode == 1
    crashed = [r for r in read_rows(tmp_path) if r["status"] == "crashed"]
    assert len(crashed) == 1
    assert "the run's process exited with status 3 without a row" in crashed[0]["error"]


def test_a_missing_data_folder_is_refused_before_anything_runs(tmp_path):
    done = sweep(
        tmp_path,
        "seed=0",
        "--steps",
        "5",
        "--data-dir",
        str(tmp_path / "later-deleted"),
        "--dataset",
        "cifar10",
    )
    assert done.returncode == 2  # refused up front: the data folder is not there
    assert "no such folder" in done.stderr
    assert not read_rows(tmp_path)


def test_two_concurrent_sweeps_into_one_store_lose_no_row(tmp_path):
    first = start_sweep(tmp_path, "seed=0,1,2", "--steps", "30")
    second = start_sweep(tmp_path, "seed=3,4,5", "--steps", "30")
    for process in (first, second):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    assert sorted(r["seed"] for r in read_rows(tmp_path)) == [0, 1, 2, 3, 4, 5]


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    args = ["seed=0,1,2,3", "--steps", "150"]
    process = start_sweep(tmp_path, *args)
    wait_for_rows(tmp_path, 1, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Resume with the same command" in err
    assert all(r["status"] == "ok" for r in read_rows(tmp_path))  # the interrupted run left no row
    done = sweep(tmp_path, *args)
    assert done.returncode == 0
    assert sorted(r["seed"] for r in read_rows(tmp_path)) == [0, 1, 2, 3]


def test_every_bad_point_is_reported_before_anything_runs(tmp_path):
    done = sweep(tmp_path, "depth=10,15", "width=0,1", "--steps", "5")
    assert done.returncode == 2
    assert "the grid has 4 points, 3 of them invalid" in done.stderr
    assert "point depth=15 width=1: depth must be 6n+4" in done.stderr
    assert "point depth=10 width=0: width must be a whole number >= 1; got 0" in done.stderr
    assert not (tmp_path / "rows").exists()


def test_a_yaml_grid_runs_like_the_same_axes_on_the_command_line(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("axes:\n  depth: [10, 16]\nfixed:\n  steps: 10\n")
    done = sweep(tmp_path / "results", str(grid))
    assert done.returncode == 0, done.stderr
    assert sorted(r["depth"] for r in read_rows(tmp_path / "results")) == [10, 16]
    listed = sweep(tmp_path / "results", "depth=10,16", "--steps", "10", "--dry-run")
    assert listed.stdout.count(" done ") == 2


def test_grid_parsing_and_presets():
    grid = parse_axes(["depth=16,22", "width=4", "backend=torch,jax"])
    assert grid.axes == {"depth": ["16", "22"], "backend": ["torch", "jax"]} and grid.fixed == {
        "width": "4"
    }
    assert [p["backend"] for p in grid.points()] == ["torch", "jax", "torch", "jax"]
    with pytest.raises(SweepError, match="an axis is written name=value"):
        parse_axes(["depth"])
    (main,) = load_grid("main")
    assert main.fixed["depth"] == 16 and main.fixed["width"] == 4
    assert len(load_grid("bench-gpu")) == 2  # a list of grids: WRN-16-4 and WRN-28-10
    with pytest.raises(SweepError, match="neither a preset"):
        load_grid("no-such-grid")
    assert Grid.from_mapping({"depth": [16, 22]}).merged(Grid({}, {"depth": 28})).points() == [
        {"depth": 28}
    ]


def test_backends_alternate_and_take_turns_going_first():
    registry.register(dataclasses.replace(registry.info("torch"), name="twin"))
    configs = [
        RunConfig(backend=b, depth=d, dataset="synthetic")
        for d in (10, 16)
        for b in ("torch", "twin")
    ]
    ordered = interleave(configs)
    assert [(c.depth, c.backend) for c in ordered] == [
        (10, "torch"),
        (10, "twin"),
        (16, "twin"),
        (16, "torch"),
    ]


def test_build_configs_checks_that_backends_are_installed(monkeypatch):
    monkeypatch.setattr(registry, "is_available", lambda name: False)
    with pytest.raises(
        SweepError, match=r"backend torch is not installed here: pip install -e '.\[torch\]'"
    ):
        build_configs(Grid({}, {"dataset": "synthetic"}))
