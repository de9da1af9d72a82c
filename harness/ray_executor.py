"""Run a sweep's configurations as tasks on a Ray cluster (``--executor ray``).

Each run is one Ray task that asks for a GPU (CUDA runs) or the CPUs it uses,
so Ray pins it to a device; inside the task the run executes in a process of
its own, as with the local executor, so its framework and device memory end
with it. Rows travel back to the driver as task results, and the driver alone
writes the store. A task whose worker or node dies becomes a ``crashed`` row,
or is tried again ``retries`` times where asked.

Every node needs this checkout installed at the same path (or the same
package) and the data at the same path: tasks run ``harness.worker`` there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

from harness.config import ConfigError, RunConfig
from harness.executor import run_in_subprocess
from harness.row import now_iso
from harness.runner import failed_row

try:
    import ray
    from ray import exceptions as ray_errors
except ImportError as err:  # Ray is an extra; the local executor never needs it
    raise ImportError("--executor ray needs Ray: pip install -e '.[ray]'") from err


def forwarded_environment() -> dict[str, str]:
    """The driver's settings that tasks need: WRNBENCH_* variables and PYTHONPATH."""
    names = [name for name in os.environ if name.startswith("WRNBENCH_")] + ["PYTHONPATH"]
    return {name: os.environ[name] for name in names if name in os.environ}


def _run_task(config_values: dict, timeout_s: float | None) -> dict:
    return run_in_subprocess(RunConfig.from_dict(config_values), timeout_s)


class RayExecutor:
    def __init__(
        self,
        address: str | None = None,
        timeout_s: float | None = None,
        retries: int = 0,
        cpus_per_run: float | None = None,
    ):
        self.timeout_s, self.retries, self.cpus_per_run = timeout_s, retries, cpus_per_run
        if not ray.is_initialized():
            ray.init(
                address=address,
                log_to_driver=False,
                include_dashboard=False,
                runtime_env={"env_vars": forwarded_environment()},
            )

    def _resources(self, config: RunConfig) -> dict:
        if config.device.startswith("cuda"):
            if config.device != "cuda":
                raise ConfigError(
                    [f"under Ray give device cuda, not {config.device}: Ray assigns the GPU"]
                )
            return {"num_gpus": 1, "num_cpus": self.cpus_per_run or 1}
        return {"num_gpus": 0, "num_cpus": self.cpus_per_run or config.threads or 1}

    def run(self, configs: Iterable[RunConfig]) -> Iterator[dict]:
        remote = ray.remote(_run_task)
        pending: dict = {}
        try:
            for config in configs:
                task = remote.options(
                    max_retries=self.retries, retry_exceptions=False, **self._resources(config)
                )
                pending[task.remote(config.to_dict(), self.timeout_s)] = (
                    config,
                    now_iso(),
                    time.perf_counter(),
                )
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                config, started_at, began = pending.pop(done[0])
                yield self._row(done[0], config, started_at, began)
        finally:
            for ref in pending:  # Ctrl-C or an error: stop what is still queued or running
                ray.cancel(ref, force=True)

    def _row(self, ref, config: RunConfig, started_at: str, began: float) -> dict:
        try:
            return ray.get(ref)
        except (
            ray_errors.WorkerCrashedError,
            ray_errors.NodeDiedError,
            ray_errors.RaySystemError,
        ) as err:
            reason = f"the Ray worker running this run died ({type(err).__name__}): {err}"
        except ray_errors.RayError as err:
            reason = f"the Ray task failed ({type(err).__name__}): {err}"
        return failed_row(
            config, "crashed", reason[-2000:], started_at, time.perf_counter() - began
        )
