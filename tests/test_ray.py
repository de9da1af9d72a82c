"""Sweeps on a real Ray cluster: a head and two worker nodes on loopback, one per session.

The cluster's nodes are separate raylet processes started by ``ray.cluster_utils``;
the sweep runs in a process of its own and connects to the head's address, as a
user's would with ``ray start --head``.
"""

import os
import subprocess
import sys
import time

import pytest

from harness.store import read_rows
from tests.conftest import NUMPY_BACKEND_ENV, REPO, SMALL_SYNTHETIC

ray_cluster_utils = pytest.importorskip("ray.cluster_utils")

ENV = NUMPY_BACKEND_ENV
FIXED = ["--backend", "numpy-test", *SMALL_SYNTHETIC, "--no-progress"]


@pytest.fixture(scope="session")
def cluster():
    cluster = ray_cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    cluster.workers = workers
    yield cluster
    cluster.shutdown()


def sweep_command(results, address, *args):
    return [
        sys.executable,
        "-m",
        "harness.cli",
        "sweep",
        *args,
        *FIXED,
        "--results",
        str(results),
        "--executor",
        "ray",
        "--address",
        address,
    ]


def run_sweep(results, address, *args, timeout=300):
    return subprocess.run(
        sweep_command(results, address, *args),
        cwd=REPO,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def outcomes(results):
    return sorted((r["config_hash"], r["status"], r["final_test_acc"]) for r in read_rows(results))


def test_ray_sweep_gives_the_same_rows_as_the_local_executor(cluster, tmp_path):
    grid = ["seed=0,1", "width=1,2", "--model", "linear", "--steps", "20", "--eval-every", "10"]
    done = run_sweep(tmp_path / "ray", cluster.address, *grid)
    assert done.returncode == 0, done.stderr
    local = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "sweep",
            *grid,
            *FIXED,
            "--results",
            str(tmp_path / "local"),
        ],
        cwd=REPO,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert local.returncode == 0, local.stderr
    ray_rows, local_rows = outcomes(tmp_path / "ray"), outcomes(tmp_path / "local")
    assert len(ray_rows) == 4
    assert [(h, s) for h, s, _ in ray_rows] == [(h, s) for h, s, _ in local_rows]
    assert [a for *_, a in ray_rows] == pytest.approx([a for *_, a in local_rows], abs=1e-9)

    again = run_sweep(tmp_path / "ray", cluster.address, *grid)
    assert again.returncode == 0 and "4 already done" in again.stdout
    assert len(read_rows(tmp_path / "ray")) == 4


def worker_pids():
    """Process ids of the harness.worker processes on this machine."""
    found = subprocess.run(["pgrep", "-f", "harness.worker"], capture_output=True, text=True)
    return set(found.stdout.split())


def wait_for_runs(count, before, timeout=60):
    """Wait until `count` harness.worker processes not in `before` run on this machine.

    Workers that were running before the sweep started (another sweep on the same
    machine) are not this sweep's runs.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(worker_pids() - before) >= count:
            return
        time.sleep(0.2)
    raise AssertionError("the runs did not start")


@pytest.mark.parametrize("retries", [0, 1])
def test_a_worker_node_killed_mid_run_fails_that_run_and_the_rest_completes(
    cluster, tmp_path, retries
):
    args = [
        "seed=0,1",
        "--model",
        "slow",
        "--steps",
        "400",
        "--eval-every",
        "400",
        "--node-retries",
        str(retries),
    ]
    before = worker_pids()
    sweep = subprocess.Popen(
        sweep_command(tmp_path, cluster.address, *args),
        cwd=REPO,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_runs(2, before)  # one run on each worker node
    victim = cluster.workers.pop(0)
    cluster.remove_node(victim, allow_graceful=False)
    cluster.workers.append(cluster.add_node(num_cpus=1))  # later tests keep two workers
    out, err = sweep.communicate(timeout=300)

    statuses = sorted(r["status"] for r in read_rows(tmp_path))
    if retries:
        assert sweep.returncode == 0, err
        assert statuses == ["ok", "ok"]
    else:
        assert sweep.returncode == 1
        assert statuses == ["crashed", "ok"]
        crashed = next(r for r in read_rows(tmp_path) if r["status"] == "crashed")
        assert "the Ray worker running this run died" in crashed["error"]
