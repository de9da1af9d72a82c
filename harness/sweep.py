"""Sweeps: a grid of run configurations, validated whole, run in order, resumable.

A grid maps setting names (any :class:`RunConfig` field) to one value or a
list of values. Points are the cartesian product. A point's identity is its
resolved configuration (``config_hash``), so a sweep that is run again skips
the points the store already holds: interrupted sweeps resume where they
stopped, and ``retry_failed`` reruns the points whose last row failed.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from harness import registry
from harness.config import ConfigError, RunConfig
from harness.data import DataError
from harness.data.cifar10 import find_layout
from harness.executor import Executor
from harness.registry import BACKEND_OPTIONS
from harness.row import STATUSES
from harness.store import read_rows, write_row

log = logging.getLogger(__name__)

# A row with one of these statuses means the point was run to an end; an
# interrupted run was not, and runs again on resume.
FINISHED = tuple(s for s in STATUSES if s != "interrupted")
FAILED = tuple(s for s in FINISHED if s != "ok")

PRESETS: dict[str, dict | list[dict]] = {
    # The README's main job: WRN-16-4 with dropout 0.3, as in the first command.
    "main": {
        "backend": "torch",
        "depth": 16,
        "width": 4,
        "dropout": 0.3,
        "steps": 200,
        "eval_every": 100,
    },
    # A 3x2 grid over two backends on the real data, small enough for a CPU.
    "small": {
        "backend": ["torch", "jax"],
        "depth": [10, 16, 22],
        "width": [1, 2],
        "steps": 300,
        "batch_size": 64,
        "eval_every": 100,
        "train_size": 10000,
        "test_size": 2000,
    },
    # Speed only: a few steps of each (d, k) on synthetic data.
    "speed": {
        "backend": ["torch", "jax"],
        "depth": [16, 22, 28],
        "width": [1, 2, 4],
        "dataset": "synthetic",
        "steps": 30,
        "eval_every": 30,
        "test_size": 1000,
        "augment": False,
    },
    # Speed benchmarks (`wrnbench bench PRESET`): train steps on a device-resident batch.
    "bench-cpu": {
        "backend": ["torch", "jax"],
        "depth": 16,
        "width": 4,
        "batch_size": 128,
        "repeat": [0, 1, 2],
    },
    # The GPU check of the benchmark issue: WRN-16-4 and WRN-28-10 within 8 minutes on one GPU.
    "bench-gpu": [
        {
            "backend": ["torch", "jax"],
            "depth": depth,
            "width": width,
            "batch_size": 128,
            "precision": ["fp32", "bf16"],
            "device": "cuda",
            "steps": 40,
            "warmup_steps": 10,
            "repeat": 0,
        }
        for depth, width in ((16, 4), (28, 10))
    ],
    # The whole paper ablation of Table 4 style: depth, width and dropout at the full recipe.
    "paper": {
        "backend": "torch",
        "depth": [16, 22, 28, 40],
        "width": [1, 2, 4, 8, 10],
        "dropout": [0.0, 0.3],
        "epochs": 200,
        "device": "cuda",
        "seed": [0, 1, 2],
    },
}


class SweepError(ValueError):
    """A grid that cannot run; ``problems`` lists every bad point or setting."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Grid:
    """Axes (settings with several values) and fixed settings."""

    axes: dict[str, list]
    fixed: dict[str, object]

    @classmethod
    def from_mapping(cls, mapping: dict) -> Grid:
        if set(mapping) <= {"axes", "fixed"} and mapping:
            axes, fixed = dict(mapping.get("axes") or {}), dict(mapping.get("fixed") or {})
        else:
            axes = {k: v for k, v in mapping.items() if isinstance(v, list)}
            fixed = {k: v for k, v in mapping.items() if not isinstance(v, list)}
        axes = {k: list(v) if isinstance(v, list) else [v] for k, v in axes.items()}
        empty = [k for k, v in axes.items() if not v]
        if empty:
            raise SweepError([f"axis {k!r} has no values" for k in empty])
        return cls(axes, fixed)

    def merged(self, other: Grid) -> Grid:
        """This grid with other's axes and fixed settings taking precedence."""
        axes = {k: v for k, v in self.axes.items() if k not in other.fixed}
        fixed = {k: v for k, v in self.fixed.items() if k not in other.axes}
        return Grid({**axes, **other.axes}, {**fixed, **other.fixed})

    def points(self) -> list[dict]:
        """Every combination, with the backend varying fastest (see :func:`interleave`)."""
        names = [k for k in self.axes if k != "backend"] + (
            ["backend"] if "backend" in self.axes else []
        )
        combos = itertools.product(*(self.axes[name] for name in names))
        return [{**self.fixed, **dict(zip(names, combo, strict=True))} for combo in combos]


def parse_axes(tokens: Iterable[str]) -> Grid:
    """``depth=16,22 width=4`` -> axes depth [16, 22] and fixed width 4."""
    mapping, problems = {}, []
    for token in tokens:
        name, sep, values = token.partition("=")
        if not sep or not name or not values:
            problems.append(f"{token!r}: an axis is written name=value[,value...]")
            continue
        parts = [v.strip() for v in values.split(",")]
        mapping[name.strip().replace("-", "_")] = parts if len(parts) > 1 else parts[0]
    if problems:
        raise SweepError(problems)
    return Grid.from_mapping(mapping)


def load_grid(source: str) -> list[Grid]:
    """A preset's name or a YAML file's path: one grid, or a list whose points are joined."""
    if source in PRESETS:
        content = PRESETS[source]
    else:
        path = Path(source)
        if not path.is_file():
            raise SweepError(
                [f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor a YAML file"]
            )
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise SweepError([f"{path}: not valid YAML ({err})"]) from None
    parts = content if isinstance(content, list) else [content]
    if not parts or not all(isinstance(part, dict) for part in parts):
        raise SweepError(
            [f"{source}: expected a mapping of setting names to values or lists, or a list of them"]
        )
    return [Grid.from_mapping(part) for part in parts]


def build_configs(grids: Grid | list[Grid]) -> list[RunConfig]:
    """Validate every point of the grids; raise once with the problems of all bad points.

    Besides each point's settings, this checks that every backend named is
    installed and every data folder named holds CIFAR-10, so that a sweep
    does not fail hours in on something knowable at the start.
    """
    grids = grids if isinstance(grids, list) else [grids]
    configs, problems, count = [], [], 0
    for grid in grids:
        for point in grid.points():
            count += 1
            try:
                configs.append(RunConfig.from_dict(point))
            except ConfigError as err:
                label = " ".join(f"{k}={point[k]}" for k in grid.axes) or "the sweep"
                problems += [f"point {label}: {problem}" for problem in err.problems]
    problems += _environment_problems(configs)
    if problems:
        bad = count - len(configs)
        header = (
            f"the grid has {count} points, {bad} of them invalid" if bad else "the sweep cannot run"
        )
        raise SweepError([header + ":", *_dedupe(problems)])
    unique = {c.config_hash: c for c in configs}
    return interleave(list(unique.values()))


def _environment_problems(configs: list[RunConfig]) -> list[str]:
    problems = []
    for backend in sorted({c.backend for c in configs}):
        if not registry.is_available(backend):
            info = registry.info(backend)
            problems.append(
                f"backend {backend} is not installed here: pip install -e '.[{info.extra}]'"
            )
    for data_dir in sorted({c.data_dir for c in configs if c.dataset == "cifar10"}, key=str):
        try:
            find_layout(Path(data_dir or "data"))
        except DataError as err:
            problems.append(str(err))
    return problems


def interleave(configs: list[RunConfig]) -> list[RunConfig]:
    """Order runs so that backends alternate, and rotate which one goes first.

    Runs of one condition on different backends then sit next to each other in
    time, so that a drift of the machine (thermal, other load) falls on every
    backend alike rather than on whichever ran last.
    """
    groups: dict[str, list[RunConfig]] = {}
    for config in configs:
        groups.setdefault(_condition_key(config), []).append(config)
    ordered = []
    for index, group in enumerate(groups.values()):
        shift = index % len(group)
        ordered += group[shift:] + group[:shift]
    return ordered


def _condition_key(config: RunConfig) -> str:
    identity = config.identity()
    for name in ("backend", *BACKEND_OPTIONS):
        identity.pop(name, None)
    return json.dumps(identity, sort_keys=True)


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def finished_hashes(results: str | Path, retry_failed: bool = False) -> set[str]:
    """Config hashes whose latest row says the point is done."""
    latest: dict[str, dict] = {}
    for row in read_rows(results):
        latest[row["config_hash"]] = row
    done = FINISHED if not retry_failed else ("ok",)
    return {h for h, row in latest.items() if row.get("status") in done}


@dataclass
class SweepSummary:
    points: int
    skipped: int = 0
    ran: int = 0
    failed: list[dict] = field(default_factory=list)
    interrupted: bool = False

    @property
    def left(self) -> int:
        return self.points - self.skipped - self.ran


def run_sweep(
    configs: list[RunConfig],
    results: str | Path,
    executor: Executor,
    retry_failed: bool = False,
    progress: bool = True,
) -> SweepSummary:
    """Run the points the store does not hold yet; write each row as it arrives."""
    summary = SweepSummary(points=len(configs))
    done = finished_hashes(results, retry_failed)
    todo = [c for c in configs if c.config_hash not in done]
    summary.skipped = len(configs) - len(todo)
    if summary.skipped:
        log.info(
            "%d of %d points already in %s; skipping them", summary.skipped, len(configs), results
        )

    def pending() -> Iterator[RunConfig]:
        for config in todo:
            # Another sweep on the same store may have finished this point meanwhile.
            if config.config_hash in finished_hashes(results, retry_failed):
                summary.skipped += 1
                continue
            yield config

    bar = tqdm(
        total=len(todo), unit="run", desc="sweep", disable=not (progress and sys.stderr.isatty())
    )
    began = time.perf_counter()
    rows = executor.run(pending())
    try:
        for row in rows:
            write_row(results, row)
            summary.ran += 1
            if row["status"] != "ok":
                summary.failed.append(row)
            _report_run(summary, row, time.perf_counter() - began, bar)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        rows.close()  # lets the executor stop what it still runs
        bar.close()
    return summary


def _report_run(summary: SweepSummary, row: dict, elapsed_s: float, bar) -> None:
    per_run = elapsed_s / summary.ran
    eta_s = per_run * summary.left
    bar.update(1)
    bar.set_postfix(failed=len(summary.failed), left=summary.left, refresh=False)
    log.info(
        "[%d done, %d failed, %d left, about %s to go] %s: %s",
        summary.ran + summary.skipped,
        len(summary.failed),
        summary.left,
        _duration(eta_s),
        describe_row(row),
        row_outcome(row),
    )


def describe_row(row: dict) -> str:
    text = f"{row['backend']} WRN-{row['depth']}-{row['width']} dropout {row['dropout']:g}"
    if row.get("mode", "train") != "train":
        return f"{text} {row['precision']} batch {row['batch_size']} {row['mode']} repeat {row['repeat']}"
    return f"{text} seed {row['seed']}"


def row_outcome(row: dict) -> str:
    if row["status"] != "ok":
        last = (row.get("error") or "").strip().splitlines()[-1:] or [""]
        return f"{row['status']}: {last[0]}"
    acc, step = row.get("final_test_acc"), row.get("step_time_ms_median")
    parts = ["ok"]
    if acc is not None:
        parts.append(f"test acc {acc:.4f}")
    if step is not None:
        parts.append(f"{step:.1f} ms/step")
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
