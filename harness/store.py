"""The results store: one JSON file per row under ``<results>/rows/``.

Each row is written to a temporary file in the same folder, flushed to disk
and renamed into place, so a crash never leaves half a row and readers never
see one. Rows have unique names, so any number of processes can write to one
store at once without a lock and without losing a row.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

ROWS_DIR = "rows"


def rows_dir(results: str | Path) -> Path:
    return Path(results) / ROWS_DIR


def write_row(results: str | Path, row: dict) -> Path:
    folder = rows_dir(results)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{row['run_id']}.json"
    text = json.dumps(row, indent=1, sort_keys=False, allow_nan=False) + "\n"
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def read_rows(results: str | Path) -> list[dict]:
    """Every stored row, oldest first; unreadable files are reported and skipped."""
    rows = []
    for path in sorted(rows_dir(results).glob("*.json")):
        if path.name.startswith(".tmp-"):
            continue
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            log.warning("skipping %s: not a readable row (%s)", path, err)
    rows.sort(key=lambda row: (row.get("started_at") or "", row.get("run_id") or ""))
    return rows


def load_rows(results: str | Path = "results") -> pd.DataFrame:
    """All rows of a store as a DataFrame, one row per run, oldest first."""
    rows = read_rows(results)
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame.from_records(rows)
