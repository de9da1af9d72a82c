"""Run one configuration in this process and write its row to a file.

``python -m harness.worker CONFIG.json ROW.json``: the sweep executors start
one such process per run, so that a framework's imports, threads and device
memory end with the run. Exit status 0 means ROW.json holds the row (the run
itself may have failed; its status says so); 2 means the input was refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from pathlib import Path

from harness import runner
from harness.backend import DeviceUnavailable
from harness.config import RunConfig
from harness.data import DataError
from harness.registry import BackendUnavailable

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Be killed when the process that started this one dies, even by SIGKILL.

    Otherwise a sweep killed with -9 would leave its current run going, and
    that run's row would be lost or arrive after the sweep resumed it again.
    """
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):  # Linux only
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(1)


def main(argv: list[str]) -> int:
    die_with_parent()
    config_path, row_path = map(Path, argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    config = RunConfig.from_dict(json.loads(config_path.read_text()))
    try:
        row = runner.run(config, progress=False)
    except (DataError, BackendUnavailable, DeviceUnavailable) as err:
        print(f"wrnbench worker: error: {err}", file=sys.stderr)
        return 2
    temp = row_path.with_suffix(".partial")
    temp.write_text(json.dumps(row, allow_nan=False))
    temp.replace(row_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
