"""Executors run a sweep's configurations, each in a process of its own.

An executor takes configurations and yields one row per configuration as runs
finish; the sweep driver alone writes rows to the store. The local executor
runs them one after another on this machine; ``harness.ray_executor`` runs
them on a Ray cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from harness.config import RunConfig
from harness.metadata import REPO_ROOT
from harness.row import now_iso
from harness.runner import failed_row

ERROR_LINES = 20


class Executor(Protocol):
    def run(self, configs: Iterable[RunConfig]) -> Iterator[dict]:
        """Run each configuration; yield its row as soon as it is known."""


def tail(text: str, lines: int = ERROR_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_in_subprocess(config: RunConfig, timeout_s: float | None, env: dict | None = None) -> dict:
    """Run one configuration in a fresh Python process and return its row.

    A run that outlives ``timeout_s`` is killed and gets status ``timeout``; a
    process that dies without a row gets ``crashed`` with the end of its
    output. Ctrl-C stops the child and is re-raised.
    """
    started_at, began = now_iso(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wrnbench-run-") as scratch:
        config_path, row_path, log_path = (
            Path(scratch) / name for name in ("config.json", "row.json", "log")
        )
        config_path.write_text(json.dumps(config.to_dict()))
        with open(log_path, "w+") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "harness.worker", str(config_path), str(row_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(env),
                start_new_session=True,
            )
            status = _wait(child, timeout_s)
            log.seek(0)
            output = log.read()
        wall = time.perf_counter() - began
        if status == "timeout":
            return failed_row(
                config,
                "timeout",
                f"killed after the {timeout_s:g} s time limit\n{tail(output)}",
                started_at,
                wall,
            )
        if child.returncode == 0 and row_path.exists():
            return json.loads(row_path.read_text())
        reason = _exit_reason(child.returncode)
        return failed_row(config, "crashed", f"{reason}\n{tail(output)}", started_at, wall)


def _child_env(extra: dict | None) -> dict:
    """This environment, with the harness importable wherever the sweep was started."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _wait(child: subprocess.Popen, timeout_s: float | None) -> str | None:
    try:
        child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(child)
        return "timeout"
    except KeyboardInterrupt:
        _stop(child, first=signal.SIGINT)
        raise
    return None


def _stop(child: subprocess.Popen, first: int = signal.SIGTERM, grace_s: float = 5.0) -> None:
    """Signal the child's whole process group, then kill it if it lingers."""
    for sig, wait_s in ((first, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _exit_reason(code: int) -> str:
    if code == 2:
        return "the run's input was refused"
    if code < 0:
        name = signal.Signals(-code).name
        hint = (
            " (the kernel's out-of-memory killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        )
        return f"the run's process was killed by {name}{hint}"
    return f"the run's process exited with status {code} without a row"


class LocalExecutor:
    """One run at a time on this machine, each in its own process."""

    def __init__(self, timeout_s: float | None = None, env: dict | None = None):
        self.timeout_s, self.env = timeout_s, env

    def run(self, configs: Iterable[RunConfig]) -> Iterator[dict]:
        for config in configs:
            yield run_in_subprocess(config, self.timeout_s, self.env)
