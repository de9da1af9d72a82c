"""The ``wrnbench`` command line: a thin layer over the harness."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from harness import registry
from harness.backend import DeviceUnavailable
from harness.config import ConfigError, RunConfig, field_types
from harness.data import DataError
from harness.spec import SpecError, WRNSpec
from harness.sweep import SweepError

log = logging.getLogger("wrnbench")

DEFAULT_RESULTS = "results"
DATA_DIR_ENV = "WRNBENCH_DATA_DIR"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, named after it; values are validated by RunConfig."""
    types = field_types()
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not None else "unset"
        text = (
            f"{f.metadata['help']} [{default}]"
            if "[" not in f.metadata["help"]
            else f.metadata["help"]
        )
        if types[f.name] is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            parser.add_argument(flag, dest=f.name, metavar=f.name.upper(), default=None, help=text)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    values = {name: value for name, value in values.items() if value is not None}
    if values.get("dataset", "cifar10") == "cifar10":
        values.setdefault("data_dir", os.environ.get(DATA_DIR_ENV, "data"))
    return RunConfig.from_dict(values)


def cmd_run(args: argparse.Namespace) -> int:
    from harness import runner, store

    config = config_from_args(args)
    log.info(
        "run %s on %s (%s): config %s",
        config.spec.name,
        config.backend,
        config.device,
        config.config_hash,
    )
    row = runner.run(config, progress=not args.no_progress)
    path = store.write_row(args.results, row)
    if args.json:
        print(json.dumps(row, indent=1))
    else:
        _print_run_summary(row, path)
    if row["status"] == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK if row["status"] == "ok" else EXIT_FAILED


def _print_run_summary(row: dict, path) -> None:
    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    print(f"status: {row['status']}  (row: {path})")
    if row["status"] != "ok":
        print(row.get("error") or "", file=sys.stderr)
    print(
        f"test acc: final {fmt(row['final_test_acc'], '.4f')}, best {fmt(row['best_test_acc'], '.4f')}; "
        f"test loss: final {fmt(row['final_test_loss'], '.4f')}; train loss {fmt(row['final_train_loss'], '.4f')}"
    )
    print(
        f"step time: median {fmt(row['step_time_ms_median'], '.1f')} ms, IQR {fmt(row['step_time_ms_iqr'], '.1f')} ms "
        f"over {row['timed_steps'] or 0} steps; {fmt(row['images_per_sec'], '.1f')} images/s; "
        f"compile ({row['compile_method']}) {fmt(row['compile_time_s'], '.2f')} s; "
        f"data wait {fmt(row['data_wait_s'], '.2f')} s"
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    return _execute(args, _sweep_configs(args))


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.sweep import Grid

    fixed = {
        "mode": "bench-infer" if args.inference else "bench",
        "dataset": "synthetic",
        "steps": 30,
    }
    fixed.update(depth=16, width=4, batch_size=128)
    installed = [n for n in registry.names() if registry.info(n).module.startswith("backends.")]
    installed = [n for n in installed if registry.is_available(n)]
    defaults = Grid({"backend": installed, "repeat": list(range(args.repeats))}, fixed)
    configs = _sweep_configs(args, defaults)
    code = _execute(args, configs)
    if not args.dry_run:
        _print_speed(args.results, {c.config_hash for c in configs})
    return code


def _print_speed(results: str, hashes: set[str]) -> None:
    from harness.report import select_rows
    from harness.report.tables import speed_table

    rows = select_rows(results)
    table = speed_table(rows[rows["config_hash"].isin(hashes)]) if not rows.empty else rows
    if table.empty:
        return
    columns = [
        "variant",
        "depth",
        "width",
        "batch_size",
        "precision",
        "runs",
        "step_time_ms",
        "step_time_iqr_ms",
        "ratio_to_fastest",
        "images_per_sec",
        "compile_time_s",
        "achieved_tflops",
        "matmul_peak_tflops",
        "peak_fraction",
    ]
    for platform, group in table.groupby("platform"):
        print(f"\n{platform}")
        print(
            group[[c for c in columns if c in group]].to_string(
                index=False, float_format=lambda v: f"{v:.4g}"
            )
        )


def _execute(args: argparse.Namespace, configs: list[RunConfig]) -> int:
    from harness import sweep
    from harness.executor import LocalExecutor

    if args.dry_run:
        done = sweep.finished_hashes(args.results, args.retry_failed)
        varying = [k for k in RunConfig().to_dict() if len({getattr(c, k) for c in configs}) > 1]
        for config in configs:
            state = "done" if config.config_hash in done else "to run"
            settings = " ".join(f"{k}={getattr(config, k)}" for k in varying)
            print(f"{config.config_hash}  {state:<6}  {settings}")
        return EXIT_OK

    if args.executor == "ray":
        from harness.ray_executor import RayExecutor

        executor = RayExecutor(
            address=args.address, timeout_s=args.run_timeout, retries=args.node_retries
        )
    else:
        executor = LocalExecutor(timeout_s=args.run_timeout)
    summary = sweep.run_sweep(
        configs, args.results, executor, args.retry_failed, not args.no_progress
    )
    print(
        f"sweep: {summary.points} points; {summary.ran} ran, {len(summary.failed)} of them failed; "
        f"{summary.skipped} already done; {summary.left} left"
    )
    for row in summary.failed:
        print(f"  {sweep.describe_row(row)}: {sweep.row_outcome(row)}", file=sys.stderr)
    if summary.interrupted:
        command = " ".join(shlex.quote(arg) for arg in ["wrnbench", *sys.argv[1:]])
        print(
            f"interrupted; finished runs are stored. Resume with the same command:\n  {command}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if summary.failed:
        print("some runs failed; rerun them with --retry-failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _sweep_configs(args: argparse.Namespace, defaults=None) -> list[RunConfig]:
    """Defaults, then preset or YAML grids, then name=values axes, then --flags, each overriding."""
    from harness import sweep

    tokens = list(args.grid)
    defaults = defaults or sweep.Grid({}, {})
    grids = [defaults]
    if tokens and "=" not in tokens[0]:
        grids = [defaults.merged(g) for g in sweep.load_grid(tokens.pop(0))]
    axes = sweep.parse_axes(tokens)
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    flags = {name: value for name, value in flags.items() if value is not None}
    both = sorted(set(flags) & (set(axes.axes) | set(axes.fixed)))
    if both:
        raise SweepError(
            [f"{name} is given both as name=... and as --{name.replace('_', '-')}" for name in both]
        )
    grids = [_with_absolute_data_dir(g.merged(axes).merged(sweep.Grid({}, flags))) for g in grids]
    return sweep.build_configs(grids)


def _with_absolute_data_dir(grid):
    """Default and absolute data folders, so that every run process finds them."""
    fixed, axes = dict(grid.fixed), dict(grid.axes)
    if "data_dir" not in fixed and "data_dir" not in axes:
        fixed["data_dir"] = os.environ.get(DATA_DIR_ENV, "data")
    if "data_dir" in fixed and fixed["data_dir"] is not None:
        fixed["data_dir"] = str(Path(str(fixed["data_dir"])).resolve())
    if "data_dir" in axes:
        axes["data_dir"] = [str(Path(str(v)).resolve()) for v in axes["data_dir"]]
    return type(grid)(axes, fixed)


def cmd_spec(args: argparse.Namespace) -> int:
    spec = WRNSpec(args.depth, args.width, args.dropout)
    backends = [name for name in (args.backends or "").split(",") if name]
    counts = {name: registry.load(name).count_params(spec) for name in backends}
    mismatched = {name: count for name, count in counts.items() if count != spec.param_count}
    if args.json:
        print(
            json.dumps(
                {
                    "spec": spec.describe(),
                    "layers": [
                        dict(dataclasses.asdict(layer), flops=layer.flops) for layer in spec.layers
                    ],
                    "backends": counts,
                },
                indent=1,
            )
        )
    else:
        _print_spec(spec, counts)
    if mismatched:
        print(
            f"parameter counts differ from the spec's {spec.param_count:,}: {mismatched}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _print_spec(spec: WRNSpec, counts: dict[str, int]) -> None:
    print(
        f"{spec.name}: {spec.blocks_per_group} blocks per group, dropout {spec.dropout:g}, {spec.num_classes} classes"
    )
    print(f"{'layer':<24} {'op':<14} {'output':>12} {'params':>11} {'MFLOPs':>9}")
    for layer in spec.layers:
        shape = "x".join(str(v) for v in layer.out_shape)
        print(
            f"{layer.name:<24} {layer.op:<14} {shape:>12} {layer.params:>11,} {layer.flops / 1e6:>9.2f}"
        )
    print(f"parameters: {spec.param_count:,}")
    print(
        f"forward FLOPs per image: {spec.forward_flops:,} ({spec.forward_flops / 1e9:.3f} G; 2 x MACs of conv and dense)"
    )
    for name, count in counts.items():
        verdict = (
            "equal to the spec"
            if count == spec.param_count
            else f"DIFFERS by {count - spec.param_count:+,}"
        )
        print(f"backend {name}: {count:,} parameters, {verdict}")


def cmd_rows(args: argparse.Namespace) -> int:
    from harness.store import load_rows, read_rows

    if args.json:
        print(json.dumps(read_rows(args.results), indent=1))
        return EXIT_OK
    rows = load_rows(args.results)
    for column in ("curve", "versions"):
        if column in rows:
            rows[column] = rows[column].map(json.dumps)
    sys.stdout.write(rows.to_csv(index=False, lineterminator="\n"))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import write_report

    for path in write_report(args.results, args.filter):
        print(path)
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    """Download CIFAR-10 in the official Python layout (needs network access)."""
    try:
        from torchvision.datasets import CIFAR10
    except ImportError:
        raise DataError("wrnbench fetch uses torchvision: pip install -e '.[torch]'") from None
    for train in (True, False):
        CIFAR10(root=args.data_dir, train=train, download=True)
    print(f"{args.data_dir}/cifar-10-batches-py")
    return EXIT_OK


def cmd_parity(args: argparse.Namespace) -> int:
    from harness import parity

    spec = WRNSpec(args.depth, args.width, args.dropout)
    backends = [name for name in args.backends.split(",") if name]
    kink_rtol = args.kink_rtol or parity.default_kink_rtol(spec, args.batch_size)
    tolerance = parity.Tolerance(kink_rtol, rtol=args.rtol, atol=args.atol)
    report = parity.run_parity(backends, spec, args.batch_size, args.seed, tolerance)
    print(report.table())
    return EXIT_OK if report.passed else EXIT_FAILED


def _add_execution_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="results folder [results]")
    parser.add_argument(
        "--retry-failed", action="store_true", help="rerun points whose last run failed"
    )
    parser.add_argument(
        "--run-timeout", type=float, help="seconds a run may take before it is killed"
    )
    parser.add_argument(
        "--executor", choices=("local", "ray"), default="local", help="where runs execute"
    )
    parser.add_argument("--address", help="ray: the cluster's address [start a local one]")
    parser.add_argument(
        "--node-retries", type=int, default=0, help="ray: reruns of a run whose node died"
    )
    parser.add_argument(
        "--cpus-per-run", type=float, help="ray: CPUs a CPU run asks for [threads or 1]"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list the points and whether each is done"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wrnbench", description="Wide ResNet benchmarks across frameworks"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train and evaluate one configuration, store its row")
    add_run_options(run)
    run.add_argument("--results", default=DEFAULT_RESULTS, help="results folder [results]")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="print the row as JSON")
    run.set_defaults(handler=cmd_run)

    sweep = commands.add_parser(
        "sweep",
        help="run a grid of configurations, each in its own process; resumable",
        description="Axes are name=v1,v2,... for any run option (depth=16,22 backend=torch,jax); "
        "a first argument without '=' names a preset or a YAML grid file. Points already in the "
        "store are skipped, so rerunning a sweep resumes it.",
    )
    sweep.add_argument("grid", nargs="*", help="[PRESET | GRID.yaml] [name=v1,v2,...] ...")
    add_run_options(sweep)
    _add_execution_options(sweep)
    sweep.set_defaults(handler=cmd_sweep)

    bench = commands.add_parser(
        "bench",
        help="speed only: steps on a synthetic batch on the device, in fresh processes",
        description="Benchmarks every installed backend (or backend=...) on WRN-16-4 at batch 128 "
        "unless told otherwise; axes and options as for sweep. Each point runs in a fresh process, "
        "backends interleaved; rows go to the store with mode bench.",
    )
    bench.add_argument("grid", nargs="*", help="[PRESET | GRID.yaml] [name=v1,v2,...] ...")
    add_run_options(bench)
    bench.add_argument(
        "--repeats", type=int, default=3, help="fresh-process repeats of each point [3]"
    )
    bench.add_argument("--inference", action="store_true", help="time forward passes only")
    _add_execution_options(bench)
    bench.set_defaults(handler=cmd_bench)

    spec = commands.add_parser("spec", help="layer table, parameters and FLOPs of a WRN")
    spec.add_argument("--depth", required=True, help="6n+4")
    spec.add_argument("--width", required=True, help="widen factor k")
    spec.add_argument("--dropout", default="0", help="dropout rate [0]")
    spec.add_argument(
        "--backends",
        help=f"comma-separated backends to build and count: {','.join(registry.names())}",
    )
    spec.add_argument("--json", action="store_true")
    spec.set_defaults(handler=cmd_spec)

    from harness import parity as parity_check  # imports no framework

    parity = commands.add_parser(
        "parity",
        help="check that backends compute the same outputs and step from the same weights",
        description=parity_check.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parity.add_argument("--backends", default="torch,jax", help="the first is the reference")
    parity.add_argument("--depth", required=True, help="6n+4")
    parity.add_argument("--width", required=True, help="widen factor k")
    parity.add_argument("--dropout", default="0", help="dropout rate of the evaluation check [0]")
    parity.add_argument(
        "--batch-size", type=int, default=parity_check.DEFAULT_BATCH, help="images [%(default)s]"
    )
    parity.add_argument("--seed", type=int, default=0, help="seed of the shared weights [0]")
    parity.add_argument(
        "--rtol",
        type=float,
        default=parity_check.DEFAULT_RTOL,
        help="tolerance relative to max|reference| [%(default)g]",
    )
    parity.add_argument(
        "--kink-rtol",
        type=float,
        help="rtol of the conv-kernel and batch-norm steps [3/sqrt(batch x 64)]",
    )
    parity.add_argument(
        "--atol", type=float, default=parity_check.DEFAULT_ATOL, help="added to it [%(default)g]"
    )
    parity.set_defaults(handler=cmd_parity)

    rows = commands.add_parser("rows", help="print the stored rows as CSV or JSON")
    rows.add_argument("--results", default=DEFAULT_RESULTS)
    rows.add_argument("--json", action="store_true")
    rows.set_defaults(handler=cmd_rows)

    report = commands.add_parser("report", help="regenerate the result tables from the rows")
    report.add_argument("--results", default=DEFAULT_RESULTS)
    report.add_argument(
        "--filter",
        help="pandas query on the row columns, e.g. \"backend == 'torch' and depth >= 16\"",
    )
    report.set_defaults(handler=cmd_report)

    fetch = commands.add_parser(
        "fetch", help="download CIFAR-10 (official Python layout) with torchvision"
    )
    fetch.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV, "data"))
    fetch.set_defaults(handler=cmd_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return args.handler(args)
    except (ConfigError, SweepError) as err:
        for problem in err.problems:
            print(f"wrnbench: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except (
        SpecError,
        DataError,
        registry.BackendUnavailable,
        DeviceUnavailable,
        KeyError,
        ValueError,
    ) as err:
        print(f"wrnbench: error: {err.args[0] if err.args else err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("wrnbench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
