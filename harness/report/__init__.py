"""Regenerate the result tables, figures and page under ``results/`` from the stored rows.

Everything written is a function of the rows (and the filter): the same rows
give byte-identical files, so that results can be committed and diffed.

    results/report.md            the page: conditions, tables, figures
    results/tables/*.csv, *.md   speed, accuracy, failures, every run
    results/figures/*.png        step time, ratio heatmaps, accuracy, learning curves
    results/README.md            what every file and column means

Reference runs outside the harness, ``results/tutorial/*.json`` (written by
``python -m benchmarks.trax_tutorial``: the Trax tutorial's own code), are
tabled on the page beside the rows, never mixed into them.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pandas as pd

from harness.report import plots
from harness.report.tables import (
    BUSY_LOAD_PER_CPU,
    NOISE_LEVEL,
    accuracy_table,
    busy_rows,
    failures_table,
    latest_per_point,
    ok_rows,
    speed_table,
    with_labels,
)
from harness.row import column_docs
from harness.store import load_rows

TABLES, FIGURES, PAGE = "tables", "figures", "report.md"
TUTORIAL = "tutorial"  # reference runs of the Trax tutorial's own code
GENERATED = (TABLES, FIGURES)


class ReportError(ValueError):
    pass


def select_rows(results: str | Path, query: str | None = None) -> pd.DataFrame:
    """Latest row per configuration, labelled, optionally narrowed by a pandas query."""
    rows = with_labels(latest_per_point(load_rows(results)))
    if query and not rows.empty:
        try:
            rows = rows.query(query, engine="python").reset_index(drop=True)
        except Exception as err:  # pandas raises many types for a bad expression
            raise ReportError(
                f"--filter {query!r} is not a valid pandas query on the rows: {err}"
            ) from None
    return rows


def write_report(results: str | Path = "results", query: str | None = None) -> list[Path]:
    """Regenerate every table, figure and page; returns the files written."""
    results = Path(results)
    rows = select_rows(results, query)
    for folder in GENERATED:  # nothing stale survives from an earlier report
        shutil.rmtree(results / folder, ignore_errors=True)
        (results / folder).mkdir(parents=True)

    speed, accuracy, failures = speed_table(rows), accuracy_table(rows), failures_table(rows)
    written = [
        *_write_table(results, "speed", speed),
        *_write_table(results, "accuracy", accuracy),
        *_write_table(results, "failures", failures),
    ]
    if not rows.empty:
        runs = rows.drop(columns=["curve", "versions"])
        runs.to_csv(
            results / TABLES / "runs.csv", index=False, float_format="%.6g", lineterminator="\n"
        )
        written.append(results / TABLES / "runs.csv")

    figures = _draw(results / FIGURES, rows, speed, accuracy)
    written += [path for _, path in figures]
    page = _page(rows, speed, accuracy, failures, figures, query, tutorial_table(results))
    (results / PAGE).write_text(page)
    (results / "README.md").write_text(results_readme())
    return [*written, results / PAGE, results / "README.md"]


def _write_table(results: Path, name: str, table: pd.DataFrame) -> list[Path]:
    csv_path, md_path = results / TABLES / f"{name}.csv", results / TABLES / f"{name}.md"
    table.to_csv(csv_path, index=False, float_format="%.6g", lineterminator="\n")
    md_path.write_text(markdown(table))
    return [csv_path, md_path]


def _draw(folder: Path, rows, speed, accuracy) -> list[tuple[str, Path]]:
    figures = []
    platforms = sorted(speed["platform"].unique()) if not speed.empty else []
    for platform in platforms:
        name = plots.slug(platform)
        figures.append(
            (
                f"Step time, {platform}",
                plots.step_time_figure(speed, platform, folder / f"step-time-{name}.png"),
            )
        )
        heatmap = plots.ratio_heatmap(speed, platform, folder / f"ratio-{name}.png")
        if heatmap:
            figures.append((f"Backend step-time ratio, {platform}", heatmap))
    if not accuracy.empty:
        figures.append(
            (
                "Test accuracy against parameters",
                plots.accuracy_figure(accuracy, folder / "accuracy.png"),
            )
        )
    curves = (
        plots.learning_curves(ok_rows(rows), folder / "learning-curves.png")
        if not rows.empty
        else None
    )
    if curves:
        figures.append(("Learning curves (median over seeds)", curves))
    return figures


def markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "_none_\n"
    return table.to_markdown(index=False, floatfmt=".4g") + "\n"


def split_constant(table: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, dict]:
    """Move columns that hold one value in every row out of the table."""
    constant = {
        c: table[c].iloc[0] for c in columns if c in table and table[c].nunique(dropna=False) == 1
    }
    return table.drop(columns=list(constant)), constant


def conditions(rows: pd.DataFrame) -> list[str]:
    """Where, when and with what the rows were measured."""
    if rows.empty:
        return ["- no rows"]
    lines = []
    for column, label in (
        ("platform", "platforms"),
        ("cpu_model", "CPUs"),
        ("versions", "library versions"),
        ("python_version", "Python"),
        ("data_source", "data"),
        ("git_commit", "harness commits"),
    ):
        values = sorted({_text(v) for v in rows[column].dropna()})
        lines.append(f"- {label}: {'; '.join(values) if values else 'unknown'}")
    if rows["data_source"].astype(str).str.endswith(":unofficial").any():
        lines.append(
            "- `unofficial` data: files in the official layout whose bytes differ from the "
            "published release (md5), such as a JPEG-re-encoded copy; accuracies may sit "
            "a little below published figures"
        )
    lines += _import_times(rows)
    dates = sorted(str(v)[:10] for v in rows["started_at"].dropna())
    lines.append(f"- dates: {dates[0]} to {dates[-1]}")
    dirty = int(rows["git_dirty"].eq(True).sum())
    if dirty:
        lines.append(f"- {dirty} of {len(rows)} runs ran from a checkout with uncommitted changes")
    busy = int(busy_rows(rows).sum())
    if busy:
        lines.append(
            f"- {busy} of {len(rows)} runs ended with the machine's load above {BUSY_LOAD_PER_CPU:g} "
            "per CPU: other work competed with them, so their times are suspect (`busy` in the speed table)"
        )
    return lines


# Entries of a row's ``versions`` that are not versions: shown on lines of their own.
NOT_VERSIONS = {"trax_import_s", "trax_math"}


def _text(value) -> str:
    if isinstance(value, dict):
        return ", ".join(
            f"{k} {v}" for k, v in sorted(value.items()) if v and k not in NOT_VERSIONS
        )
    return str(value)


def _import_times(rows: pd.DataFrame) -> list[str]:
    """Trax's import time: reported, never counted in a step time."""
    times = [
        float(v["trax_import_s"])
        for v in rows["versions"].dropna()
        if isinstance(v, dict) and v.get("trax_import_s")
    ]
    if not times:
        return []
    return [
        f"- `import trax`: {min(times):.0f} to {max(times):.0f} s over {len(times)} runs "
        "(outside every timing)"
    ]


def tutorial_table(results: Path) -> pd.DataFrame:
    """One line per run of the Trax tutorial's own code (benchmarks/trax_tutorial.py)."""
    lines = []
    for path in sorted((results / TUTORIAL).glob("*.json")):
        run = json.loads(path.read_text())
        seconds = [s for step, s in run["loop_seconds_per_step"] if step > 1000]
        lines.append(
            {
                "file": f"{TUTORIAL}/{path.name}",
                "seed": run["seed"],
                "steps": run["steps"],
                "threads": run["threads"],
                "trax_math": run["trax_math"],
                "test_images": run["test_images"],
                "loop_eval_acc_by_1000_steps": " / ".join(
                    f"{acc:.3f}" for step, acc in run["loop_eval_accuracy"] if step % 1000 == 0
                ),
                "test_acc_batch_bn": run["test_acc_batch_bn"],
                "test_acc_running_bn": run["test_acc_running_bn"],
                "loop_s_per_step": statistics.median(seconds) if seconds else None,
            }
        )
    return pd.DataFrame(lines)


def _tutorial_section(table: pd.DataFrame) -> list[str]:
    if table.empty:
        return []
    return [
        "## The Trax tutorial's own code",
        "",
        "Reference runs outside the harness: the tutorial's `training.Loop` code on the same",
        "files (`python -m benchmarks.trax_tutorial`). `loop_eval_acc_by_1000_steps` is what",
        "the tutorial prints: 20 batches of 64 test images, the next 1,280 each time, with",
        "batch statistics. `test_acc_*` are the final weights on the whole test set, as the",
        "harness evaluates them. `loop_s_per_step` is the Loop's own figure: the median over",
        "its 1000-step intervals after the first, with its checkpoints inside.",
        "",
        markdown(table),
    ]


def _page(rows, speed, accuracy, failures, figures, query, tutorial) -> str:
    ok = ok_rows(rows)
    lines = [
        "# WRN benchmark results",
        "",
        "Generated by `wrnbench report` from `rows/`; do not edit by hand.",
        "",
    ]
    if query:
        lines += [f"Rows narrowed by `--filter {query}`.", ""]
    lines += [
        f"{len(rows)} configurations, {len(ok)} of them finished successfully, {len(failures)} failed.",
        "",
    ]
    lines += ["## Conditions", "", *conditions(rows), ""]
    lines += ["## Speed", "", *_speed_section(speed)]
    lines += ["## Accuracy", "", *_accuracy_section(accuracy)]
    lines += _tutorial_section(tutorial)
    lines += ["## Figures", ""]
    for title, path in figures:
        lines += [f"### {title}", "", f"![{title}]({path.parent.name}/{path.name})", ""]
    lines += ["## Failed runs", "", markdown(failures)]
    return "\n".join(lines)


def _speed_section(speed: pd.DataFrame) -> list[str]:
    if speed.empty:
        return ["_no timed runs_", ""]
    lines = [
        "Median step time (device synchronised; first step and warm-up left out) per backend",
        "variant, with the ratio to the fastest variant of the same workload on the same",
        "platform. Rows from different platforms are never compared with each other.",
        "",
    ]
    for platform, table in speed.groupby("platform", sort=True):
        shown, constant = split_constant(
            table.drop(columns=["platform"]), ["model", "dropout", "batch_size", "precision"]
        )
        common = ", ".join(f"{k} {v}" for k, v in constant.items())
        lines += [
            f"### {platform}",
            "",
            f"Common to every row: {common}." if common else "",
            "",
            markdown(shown),
        ]
    return lines


def _accuracy_section(accuracy: pd.DataFrame) -> list[str]:
    if accuracy.empty:
        return ["_no evaluated runs_", ""]
    from harness.report.tables import RECIPE

    shown, constant = split_constant(accuracy, RECIPE)
    common = ", ".join(f"{k} {v}" for k, v in constant.items())
    return [
        "Final test accuracy over seeds. `beyond_seed_noise` compares each variant with",
        f"the reference variant of the same recipe by Welch's t-test (yes: p < {NOISE_LEVEL});",
        "it needs at least two seeds on each side. Runs with `eval_bn` both give",
        "`test_acc_*` with batch norm's running averages and `batch_bn_*` with each test",
        "batch's own statistics: the same weights, compared the same way.",
        "",
        f"Common to every row: {common}." if common else "",
        "",
        markdown(shown),
    ]


def results_readme() -> str:
    lines = [
        "# results/",
        "",
        "Generated by `wrnbench report`; do not edit by hand.",
        "",
        "- `rows/<run_id>.json`: one file per run, written atomically by `wrnbench run` and",
        "  `wrnbench sweep`. Load them with `harness.store.load_rows('results')` (a pandas",
        "  DataFrame) or print them with `wrnbench rows [--json]`.",
        "- `report.md`: the page that puts the tables and figures together, with the",
        "  conditions (platforms, versions, data, dates) they came from.",
        "- `tables/speed.*`: step time, images/s and compile time per backend variant for",
        "  each workload and platform, with the ratio to the fastest variant.",
        "- `tables/accuracy.*`: final test accuracy per recipe and variant over seeds, and",
        "  whether a variant differs from the reference beyond seed noise.",
        "- `tables/failures.*`: runs that did not finish, with status and last error line.",
        "- `tables/runs.csv`: every row, without the learning curve and version columns.",
        "- `tutorial/*.json`: reference runs of the Trax tutorial's own code",
        "  (`python -m benchmarks.trax_tutorial`), not rows; tabled on the page.",
        "- `figures/*.png`: step time against parameters and FLOPs, backend ratio heatmaps",
        "  (per platform), accuracy against parameters, learning curves.",
        "",
        "Tables use the latest row of each configuration (`config_hash`), so a retried",
        "run replaces its failure. `variant` is the backend with its speed options;",
        "`platform` is the device, thread count and machine.",
        "",
        "Step time covers the host-to-device copy of a ready batch, forward, backward and",
        "the optimizer update, up to the point where the device has finished. It leaves",
        "out data loading (`data_wait_s`), evaluation, the first step (`compile_time_s`)",
        "and `warmup_steps` steps after it.",
        "",
        "## Columns of a row",
        "",
        "| column | meaning |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {text} |" for name, text in column_docs().items()]
    return "\n".join(lines) + "\n"
