"""Result tables from stored rows: speed, accuracy over seeds, failures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from harness import registry

# Settings that change what a step computes; rows that share them are the same
# workload, whichever backend ran it.
WORKLOAD = ["mode", "model", "depth", "width", "dropout", "batch_size", "precision"]
# Settings that change what a run learns, besides the seed.
RECIPE = [
    "dataset",
    "model",
    "depth",
    "width",
    "dropout",
    "optimizer",
    "lr",
    "batch_size",
    "total_steps",
    "augment",
    "normalize",
    "eval_bn",
    "train_images",
    "test_images",
    "precision",
]
BATCH_BN_COLUMNS = (
    "batch_bn_acc_median",
    "batch_bn_acc_min",
    "batch_bn_acc_max",
)
NOISE_LEVEL = 0.05  # Welch's t-test: a difference with p below this exceeds seed noise
# A run's own threads load the machine to about 1 per CPU; well above that, other
# work was competing for the CPUs while it was timed.
BUSY_LOAD_PER_CPU = 1.5


def busy_rows(rows: pd.DataFrame) -> pd.Series:
    """True for rows measured while other work loaded the machine (see BUSY_LOAD_PER_CPU)."""
    if rows.empty or "load_avg_1m" not in rows:
        return pd.Series(False, index=rows.index)
    return (rows["load_avg_1m"] / rows["cpu_count"]) > BUSY_LOAD_PER_CPU


def latest_per_point(rows: pd.DataFrame) -> pd.DataFrame:
    """The last row of each configuration: a retried point replaces its failure."""
    if rows.empty:
        return rows
    ordered = rows.sort_values(["started_at", "run_id"])
    return ordered.drop_duplicates("config_hash", keep="last").reset_index(drop=True)


def with_labels(rows: pd.DataFrame) -> pd.DataFrame:
    """Add ``variant`` (backend and its speed options) and ``platform`` (where it ran)."""
    if rows.empty:
        return rows
    rows = rows.copy()
    rows["variant"] = rows.apply(_variant, axis=1)
    rows["platform"] = rows.apply(_platform, axis=1)
    return rows


def _variant(row) -> str:
    options = [name for name in ("channels_last", "compile") if row.get(name) is True]
    if row.get("backend") == "trax":
        math_backend = row.get("trax_math")
        options.append(f"math {math_backend if _present(math_backend) else 'jax'}")
    if row.get("model") not in (None, "spec"):
        options.insert(0, f"model {row['model']}")
    return f"{row['backend']} ({', '.join(options)})" if options else str(row["backend"])


def _platform(row) -> str:
    on = f"{row['device_name']} [{row['device']}]"
    if row.get("device") == "cpu":
        for threads in (row.get("threads"), row.get("omp_num_threads"), row.get("cpu_count")):
            if _present(threads):
                on += f", {int(threads)} threads"
                break
    return f"{on} on {row['hostname']}"


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def ok_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["status"] == "ok"] if not rows.empty else rows


def speed_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Step time per variant for each workload and platform, with the ratio to the fastest."""
    timed = ok_rows(rows)
    timed = timed[timed["step_time_ms_median"].notna()] if not timed.empty else timed
    if timed.empty:
        return pd.DataFrame()
    keys = ["platform", *WORKLOAD]
    timed = timed.assign(busy=busy_rows(timed))
    # The spec's FLOPs do not describe a backend's own model (rows written before
    # the runner left them out still carry them).
    own_model = ~timed.apply(
        lambda row: registry.spec_flops_apply(row["backend"], row["model"]), axis=1
    ).astype(bool)
    for column in ("forward_flops", "achieved_tflops", "peak_fraction"):
        if column in timed:
            timed[column] = timed[column].where(~own_model)
    table = (
        timed.groupby([*keys, "variant"], dropna=False, sort=True)
        .agg(
            runs=("run_id", "count"),
            busy=("busy", "sum"),
            param_count=("param_count", "first"),
            forward_flops=("forward_flops", "first"),
            step_time_ms=("step_time_ms_median", "median"),
            step_time_iqr_ms=("step_time_ms_iqr", "median"),
            images_per_sec=("images_per_sec", "median"),
            compile_time_s=("compile_time_s", "median"),
            achieved_tflops=("achieved_tflops", "median"),
            matmul_peak_tflops=("matmul_peak_tflops", "median"),
            peak_fraction=("peak_fraction", "median"),
            vendor_peak_tflops=("vendor_peak_tflops", "first"),
        )
        .reset_index()
    )
    # Columns no row fills go, but for the FLOPs the figures are drawn against.
    empty = [c for c in table if c != "forward_flops" and table[c].isna().all()]
    table = table.drop(columns=empty)
    fastest = table.groupby(keys, dropna=False)["step_time_ms"].transform("min")
    table.insert(
        table.columns.get_loc("step_time_ms") + 1,
        "ratio_to_fastest",
        table["step_time_ms"] / fastest,
    )
    return table


def accuracy_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Final test accuracy per recipe and variant over seeds, and whether variants differ."""
    done = ok_rows(rows)
    done = done[done["final_test_acc"].notna()] if not done.empty else done
    if done.empty:
        return pd.DataFrame()
    # One run per seed: runs of a recipe that differ only in what it leaves out
    # (how often it evaluated, say) are not more seeds; the latest stands.
    done = done.sort_values(["started_at", "run_id"]).drop_duplicates(
        [*RECIPE, "variant", "seed"], keep="last"
    )
    table = (
        done.groupby([*RECIPE, "variant"], dropna=False, sort=True)
        .agg(
            seeds=("seed", "nunique"),
            test_acc_median=("final_test_acc", "median"),
            test_acc_min=("final_test_acc", "min"),
            test_acc_max=("final_test_acc", "max"),
            test_acc_std=("final_test_acc", "std"),
            best_test_acc_median=("best_test_acc", "median"),
            # eval_bn "both": the same weights with each batch's own statistics
            batch_bn_acc_median=("final_test_acc_batch_bn", "median"),
            batch_bn_acc_min=("final_test_acc_batch_bn", "min"),
            batch_bn_acc_max=("final_test_acc_batch_bn", "max"),
            param_count=("param_count", "first"),
        )
        .reset_index()
    )
    for count in ("batch_size", "total_steps", "train_images", "test_images"):
        table[count] = table[count].astype("Int64")  # counts, not 1e+04
    verdicts = [_against_reference(done, row) for row in table.itertuples(index=False)]
    table["reference"], table["diff_vs_reference"], table["p_value"], table["beyond_seed_noise"] = (
        zip(*verdicts, strict=True)
    )
    if table["batch_bn_acc_median"].isna().all():
        return table.drop(columns=list(BATCH_BN_COLUMNS))
    # The same comparison for the batch-statistics protocol, where a run had it.
    verdicts = [
        _against_reference(done, row, "final_test_acc_batch_bn")
        for row in table.itertuples(index=False)
    ]
    _, table["batch_bn_diff_vs_reference"], _, table["batch_bn_beyond_seed_noise"] = zip(
        *verdicts, strict=True
    )
    return table


def reference_variant(variants) -> str:
    """The variant others are compared with: plain torch where present."""
    variants = sorted(set(variants))
    return "torch" if "torch" in variants else variants[0]


def _against_reference(done: pd.DataFrame, row, column: str = "final_test_acc") -> tuple:
    """The recipe's reference variant, and how far the row's `column` lies from it."""
    same = done
    for key in RECIPE:
        value = getattr(row, key)
        same = same[same[key].isna()] if not _present(value) else same[same[key] == value]
    reference = reference_variant(same["variant"])
    if row.variant == reference:
        return reference, None, None, ""
    ours = same.loc[same["variant"] == row.variant, column].dropna().to_numpy()
    theirs = same.loc[same["variant"] == reference, column].dropna().to_numpy()
    if len(ours) == 0 or len(theirs) == 0:
        return reference, None, None, ""
    diff = float(np.median(ours) - np.median(theirs))
    if len(ours) < 2 or len(theirs) < 2:
        return reference, diff, None, "unknown (needs 2+ seeds each)"
    if np.ptp(ours) == 0 and np.ptp(theirs) == 0:
        return reference, diff, None, "yes" if diff else "no"
    p_value = float(stats.ttest_ind(ours, theirs, equal_var=False).pvalue)
    return reference, diff, p_value, "yes" if p_value < NOISE_LEVEL else "no"


def failures_table(rows: pd.DataFrame) -> pd.DataFrame:
    if rows.empty:
        return pd.DataFrame()
    failed = rows[rows["status"] != "ok"]
    columns = ["run_id", "variant", "depth", "width", "dropout", "seed", "status", "error"]
    table = failed[columns].copy()
    table["error"] = table["error"].fillna("").map(_last_line)
    return table.sort_values("run_id").reset_index(drop=True)


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""
