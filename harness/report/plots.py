"""Figures from the result tables, as PNG files that are the same bytes every time.

Speed figures are drawn per platform (device and machine), never mixing two;
accuracy figures name the platforms their runs came from in the caption the
page gives them.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from harness.report.tables import RECIPE, reference_variant  # noqa: E402

DPI = 110
MAX_CURVE_PANELS = 12
_SAVE = {"dpi": DPI, "metadata": {"Software": None}}  # no version string: same bytes on rerun


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def _markers():
    return iter(["o", "s", "^", "D", "v", "P", "X", "*"] * 4)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, **_SAVE)
    plt.close(figure)
    return path


def step_time_figure(speed: pd.DataFrame, platform: str, path: Path) -> Path:
    """Step time against parameters and against FLOPs, one series per variant.

    Points of another mode or batch size are other series: a line never joins a
    batch of 64 to one of 128.
    """
    table = speed[speed["platform"] == platform]
    series = ["variant", "mode", "batch_size"]
    several = table[["mode", "batch_size"]].drop_duplicates().shape[0] > 1
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    points = {"param_count": 0, "forward_flops": 0}
    for ((variant, mode, batch), group), marker in zip(
        table.groupby(series, sort=True), _markers(), strict=False
    ):
        label = f"{variant}, {mode}, batch {batch}" if several else variant
        group = group.sort_values("param_count")
        for axis, column in zip(axes, ("param_count", "forward_flops"), strict=True):
            known = group[group[column] > 0]  # no FLOPs for a backend's own model
            axis.plot(known[column], known["step_time_ms"], marker=marker, label=label)
            points[column] += len(known)
    axes[0].set_xlabel("parameters")
    axes[1].set_xlabel("forward FLOPs per image")
    axes[0].set_ylabel("median step time (ms)")
    for axis, column in zip(axes, points, strict=True):
        if not points[column]:
            axis.text(0.5, 0.5, "no figures", ha="center", transform=axis.transAxes)
            continue
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.xaxis.set_minor_formatter(NullFormatter())  # labels overlapped
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"Step time on {platform}", fontsize=9)
    return _save(figure, path)


def ratio_heatmap(speed: pd.DataFrame, platform: str, path: Path) -> Path | None:
    """Step time of each variant over the reference's, per depth and width."""
    table = speed[speed["platform"] == platform]
    variants = sorted(table["variant"].unique())
    if len(variants) < 2:
        return None
    reference = reference_variant(variants)
    others = [v for v in variants if v != reference]
    base = table[table["variant"] == reference].set_index(
        ["mode", "depth", "width", "dropout", "batch_size"]
    )
    figure, axes = plt.subplots(1, len(others), figsize=(4.2 * len(others), 3.6), squeeze=False)
    for axis, variant in zip(axes[0], others, strict=True):
        ours = table[table["variant"] == variant].set_index(
            ["mode", "depth", "width", "dropout", "batch_size"]
        )
        ratio = (
            (ours["step_time_ms"] / base["step_time_ms"])
            .dropna()
            .groupby(level=["depth", "width"])
            .median()
        )
        grid = ratio.unstack("width").sort_index()
        values = grid.to_numpy(dtype=float)
        image = axis.imshow(
            values, cmap="coolwarm", vmin=0, vmax=max(2.0, np.nanmax(values) if values.size else 2)
        )
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):
                axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
        axis.set_xticks(range(len(grid.columns)), [str(w) for w in grid.columns])
        axis.set_yticks(range(len(grid.index)), [str(d) for d in grid.index])
        axis.set_xlabel("width k")
        axis.set_ylabel("depth d")
        axis.set_title(f"{variant} / {reference}", fontsize=9)
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.suptitle(f"Step-time ratio on {platform} (below 1: faster than {reference})", fontsize=9)
    return _save(figure, path)


def accuracy_figure(accuracy: pd.DataFrame, path: Path) -> Path:
    """Median final test accuracy against parameters, min-max over seeds as bars.

    One series per variant and recipe: a line joins only networks trained the same
    way, and the legend names the settings in which the series differ.
    """
    figure, axis = plt.subplots(figsize=(9, 6.5))
    varying = [
        c
        for c in RECIPE
        if c not in ("model", "depth", "width") and accuracy[c].nunique(dropna=False) > 1
    ]
    series = accuracy.groupby(["variant", *varying], sort=True, dropna=False)
    for (key, group), marker in zip(series, _markers(), strict=False):
        variant, *values = key
        label = ", ".join(
            [variant, *(f"{c} {_short(v)}" for c, v in zip(varying, values, strict=True))]
        )
        group = group.sort_values("param_count")
        error = [
            group["test_acc_median"] - group["test_acc_min"],
            group["test_acc_max"] - group["test_acc_median"],
        ]
        axis.errorbar(
            group["param_count"],
            group["test_acc_median"],
            yerr=error,
            marker=marker,
            capsize=3,
            label=label,
        )
    axis.set_xscale("log")
    axis.set_xlabel("parameters")
    axis.set_ylabel("final test accuracy")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return _save(figure, path)


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _panel(row) -> str:
    """Runs that share a panel differ only in variant and seed."""
    data = f"{row.dataset} {row.train_images}"
    return f"WRN-{row.depth}-{row.width} p={row.dropout:g}, {row.optimizer}, {row.total_steps} steps, {data}"


def learning_curves(rows: pd.DataFrame, path: Path) -> Path | None:
    """Test accuracy over steps, one panel per network, the median over seeds per variant."""
    points = [
        {"net": _panel(r), "variant": r.variant, "seed": r.seed, **p}
        for r in rows.itertuples(index=False)
        if isinstance(r.curve, list)
        for p in r.curve
    ]
    if not points:
        return None
    frame = pd.DataFrame(points)
    nets = sorted(frame["net"].unique())[:MAX_CURVE_PANELS]
    columns = min(3, len(nets))
    lines = -(-len(nets) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4 * columns, 3 * lines), squeeze=False)
    for axis, net in zip(axes.flat, nets, strict=False):
        for variant, group in frame[frame["net"] == net].groupby("variant", sort=True):
            curve = group.groupby("step")["test_acc"].median()
            axis.plot(curve.index, curve.to_numpy(), marker=".", label=variant)
        axis.set_title(net, fontsize=9)
        axis.set_xlabel("step")
        axis.set_ylabel("test accuracy")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(nets) :]:
        axis.axis("off")
    return _save(figure, path)
