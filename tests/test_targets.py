"""The speed-targets script, end to end on a tiny workload, in real processes."""

import json
import subprocess
import sys

import pytest

from harness import registry
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not registry.is_available("torch"), reason="torch not installed")


def targets(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.targets", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_targets_time_harness_and_minimal_loop_side_by_side(tmp_path):
    out = tmp_path / "targets.json"
    done = targets(
        *("--backends", "torch", "--depth", "10", "--width", "1", "--batch", "8"),
        *("--steps", "4", "--warmup", "1", "--rounds", "2", "--json", str(out)),
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert [len(figures["rounds"][k]) for k in ("torch-harness", "torch-minimal")] == [2, 2]
    summary = figures["summary"]
    assert summary["fastest_backend"] == "torch"
    ratio = summary["harness_over_minimal"]["torch"]
    steps = summary["step_s"]
    assert ratio == pytest.approx(steps["torch-harness"] / steps["torch-minimal"])
    assert 0 < summary["fraction_of_matmul_peak"] < 1.5
    assert summary["pipeline_over_fastest_backend"] > 0


def test_targets_refuse_an_unknown_backend():
    done = targets("--backends", "torch,mxnet", "--rounds", "1")
    assert done.returncode != 0
    assert "mxnet" in done.stderr and "choose from" in done.stderr
