"""Regenerate the result tables under ``results/`` from the stored rows.

Everything written here is a pure function of the rows: the same rows give
byte-identical files, so tables can be committed and diffed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.row import column_docs
from harness.store import load_rows

TABLES_DIR = "tables"

# A group of runs that differ only in their seed.
CONDITION = [
    "dataset",
    "backend",
    "model",
    "device",
    "device_name",
    "precision",
    "channels_last",
    "compile",
    "depth",
    "width",
    "dropout",
    "optimizer",
    "batch_size",
    "total_steps",
    "augment",
    "eval_bn",
]


def _ok(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["status"] == "ok"] if len(rows) else rows


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and speed per condition, over the seeds of the successful runs."""
    ok = _ok(rows)
    if ok.empty:
        return pd.DataFrame()
    grouped = ok.groupby(CONDITION, dropna=False, sort=True)
    table = grouped.agg(
        runs=("run_id", "count"),
        seeds=("seed", lambda s: ",".join(str(v) for v in sorted(set(s)))),
        test_acc_median=("final_test_acc", "median"),
        test_acc_min=("final_test_acc", "min"),
        test_acc_max=("final_test_acc", "max"),
        best_test_acc_median=("best_test_acc", "median"),
        step_time_ms=("step_time_ms_median", "median"),
        step_time_iqr_ms=("step_time_ms_iqr", "median"),
        images_per_sec=("images_per_sec", "median"),
        compile_time_s=("compile_time_s", "median"),
        param_count=("param_count", "first"),
    )
    return table.reset_index()


def failures_table(rows: pd.DataFrame) -> pd.DataFrame:
    if rows.empty:
        return pd.DataFrame()
    failed = rows[rows["status"] != "ok"]
    columns = ["run_id", "backend", "depth", "width", "dropout", "seed", "status", "error"]
    table = failed[columns].copy()
    table["error"] = (
        table["error"]
        .fillna("")
        .map(lambda text: text.strip().splitlines()[-1] if text.strip() else "")
    )
    return table.sort_values("run_id").reset_index(drop=True)


def conditions(rows: pd.DataFrame) -> list[str]:
    """Where and when the rows were measured, one line per fact."""
    if rows.empty:
        return []
    lines = []
    for column, label in (
        ("hostname", "machines"),
        ("device_name", "devices"),
        ("cpu_model", "CPUs"),
        ("framework_version", "framework versions"),
        ("python_version", "Python"),
        ("dataset", "data sets"),
        ("git_commit", "harness commits"),
    ):
        values = sorted({str(v) for v in rows[column].dropna()})
        lines.append(f"- {label}: {', '.join(values) if values else 'unknown'}")
    dates = sorted(str(v)[:10] for v in rows["started_at"].dropna())
    if dates:
        lines.append(f"- dates: {dates[0]} to {dates[-1]}")
    dirty = int(rows["git_dirty"].fillna(False).astype(bool).sum())
    if dirty:
        lines.append(f"- {dirty} of {len(rows)} runs ran from a checkout with uncommitted changes")
    return lines


def _markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "_no rows_\n"
    return table.to_markdown(index=False, floatfmt=".4g") + "\n"


def split_constant(table: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, dict]:
    """Drop the given columns that hold one value in every row; return them apart."""
    constant = {
        c: table[c].iloc[0] for c in columns if c in table and table[c].nunique(dropna=False) == 1
    }
    return table.drop(columns=list(constant)), constant


ACCURACY_COLUMNS = [
    "runs",
    "seeds",
    "test_acc_median",
    "test_acc_min",
    "test_acc_max",
    "best_test_acc_median",
]
SPEED_COLUMNS = [
    "step_time_ms",
    "step_time_iqr_ms",
    "images_per_sec",
    "compile_time_s",
    "param_count",
]


def summary_markdown(summary: pd.DataFrame) -> list[str]:
    if summary.empty:
        return ["_no successful runs_", ""]
    varying, constant = split_constant(summary, CONDITION)
    keys = [c for c in CONDITION if c in varying]
    common = ", ".join(f"{name} {value}" for name, value in constant.items())
    return [
        f"Common to every row: {common}.",
        "",
        "### Test accuracy (final, over seeds)",
        "",
        _markdown(varying[keys + ACCURACY_COLUMNS]),
        "### Step time (median over runs of each run's median)",
        "",
        _markdown(varying[keys + SPEED_COLUMNS]),
    ]


def write_report(results: str | Path = "results") -> list[Path]:
    """Regenerate the tables and results/README.md; returns the files written."""
    results = Path(results)
    rows = load_rows(results)
    out = results / TABLES_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = []

    summary = summary_table(rows)
    failures = failures_table(rows)
    for name, table in (("summary", summary), ("failures", failures)):
        table.to_csv(out / f"{name}.csv", index=False, float_format="%.6g", lineterminator="\n")
        written.append(out / f"{name}.csv")
    if not rows.empty:
        flat = rows.drop(columns=[c for c in ("curve", "versions") if c in rows])
        flat.to_csv(out / "runs.csv", index=False, float_format="%.6g", lineterminator="\n")
        written.append(out / "runs.csv")

    page = ["# Results", "", f"{len(rows)} runs, {len(_ok(rows))} of them successful.", ""]
    page += ["## Conditions", "", *conditions(rows), ""]
    page += ["## Accuracy and speed per condition", "", *summary_markdown(summary)]
    page += ["## Failed runs", "", _markdown(failures)]
    (out / "summary.md").write_text("\n".join(page))
    written.append(out / "summary.md")

    (results / "README.md").write_text(results_readme())
    written.append(results / "README.md")
    return written


def results_readme() -> str:
    lines = [
        "# results/",
        "",
        "Generated by `wrnbench report` from the rows in `rows/`; do not edit by hand.",
        "",
        "- `rows/<run_id>.json`: one file per run, written atomically by `wrnbench run`.",
        "  Load them all with `harness.store.load_rows('results')` (a pandas DataFrame)",
        "  or print them with `wrnbench rows [--json]`.",
        "- `tables/summary.md`, `tables/summary.csv`: accuracy (median, min and max over",
        "  seeds) and step time per condition, successful runs only, with the conditions",
        "  (machines, devices, versions, data, dates) they came from.",
        "- `tables/failures.csv`: the runs that did not finish, with their status and error.",
        "- `tables/runs.csv`: every row, without the learning curve and version columns.",
        "",
        "Step time covers the host-to-device copy of a ready batch, forward, backward and",
        "the optimizer update, up to the point where the device has finished. It leaves",
        "out data loading (`data_wait_s`), evaluation, the first step (`compile_time_s`)",
        "and `warmup_steps` steps after it.",
        "",
        "## Columns",
        "",
        "| column | meaning |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {text} |" for name, text in column_docs().items()]
    return "\n".join(lines) + "\n"
