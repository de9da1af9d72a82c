"""The benchmark issue's three targets, measured side by side in fresh processes.

    python -m benchmarks.targets [--depth 16 --width 4 --batch 128 --rounds 3]
                                 [--backends torch,jax,trax]

1. Each backend's steady-state training step in the harness (``wrnbench run``'s
   own path: a pipeline batch copied to the device, forward, backward, update,
   device synchronised) against a minimal hand-written loop of the same network
   in the same framework (``minimal_torch.py``, ``minimal_jax.py``,
   ``minimal_trax.py``). Target: harness / minimal <= 1.10.
2. The data pipeline's images/s, augmentation on, against the images/s of the
   fastest backend. Target: >= 20x.
3. The fastest backend's achieved FLOP/s (the spec's 3 x forward FLOPs per
   image) against the fp32 matmul peak measured in its own framework. Target:
   >= 45 %.

Every measurement runs in a process of its own, and the rounds interleave the
kinds (harness and minimal loop of one framework next to each other), so that
drift of the machine falls on all alike. Medians over rounds are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FRAMEWORKS = ("torch", "jax", "trax")


def measure(kind: str, args: argparse.Namespace) -> dict:
    """Run in a fresh process: time one kind, return its figures."""
    if kind == "pipeline":
        return _pipeline(args)
    framework, what = kind.split("-")
    if what == "harness":
        return _harness(framework, args)
    return _minimal(framework, args)


def _harness(backend: str, args) -> dict:
    from harness import runner
    from harness.config import RunConfig

    config = RunConfig(
        backend=backend,
        depth=args.depth,
        width=args.width,
        batch_size=args.batch,
        dataset="synthetic",
        train_size=10 * args.batch,
        test_size=100,
        steps=args.steps,
        eval_every=args.steps,
        warmup_steps=args.warmup,
    )
    row = runner.run(config, progress=False)
    if row["status"] != "ok":
        raise RuntimeError(row["error"])
    from harness import registry

    trainer = registry.load(backend).create_trainer(config)
    peak = trainer.matmul_flops()
    return {
        "step_s": row["step_time_ms_median"] / 1e3,
        "iqr_s": row["step_time_ms_iqr"] / 1e3,
        "matmul_peak_flops": peak,
        "train_flops_per_image": config.spec.train_flops,
    }


def _minimal(framework: str, args) -> dict:
    module = __import__(f"benchmarks.minimal_{framework}", fromlist=["build"])
    step, sync = module.build(args.depth, args.width, args.batch)
    times = []
    for index in range(1 + args.warmup + args.steps - 1):
        began = time.perf_counter()
        step()
        sync()
        if index > args.warmup:
            times.append(time.perf_counter() - began)
    quartiles = statistics.quantiles(times, n=4)
    return {"step_s": statistics.median(times), "iqr_s": quartiles[2] - quartiles[0]}


def _pipeline(args) -> dict:
    from harness.data import TrainBatches, synthetic

    split = synthetic(50_000, 1).train
    batches = 200
    stream = TrainBatches(split, args.batch, seed=0, augment=True, stop=batches)
    began = time.perf_counter()
    for _ in stream:
        pass
    seconds = time.perf_counter() - began
    return {"images_per_sec": batches * args.batch / seconds}


def _child(kind: str, args) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.targets",
        "--measure",
        kind,
        "--depth",
        str(args.depth),
        "--width",
        str(args.width),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--backends", help="comma-separated frameworks [every installed one of torch, jax, trax]"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args)))
        return

    frameworks = _frameworks(args.backends)
    kinds = [f"{fw}-{what}" for fw in frameworks for what in ("harness", "minimal")]
    results: dict[str, list[dict]] = {kind: [] for kind in (*kinds, "pipeline")}
    for round_index in range(args.rounds):
        # Rotate which framework goes first; its harness and minimal loop stay side by side.
        shift = 2 * (round_index % len(frameworks))
        for kind in (*kinds[shift:], *kinds[:shift], "pipeline"):
            results[kind].append(_child(kind, args))
            print(f"round {round_index + 1}: {kind}: {results[kind][-1]}", file=sys.stderr)
    report = summarize(results, frameworks, args)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"rounds": results, "summary": report}, indent=1))


def _frameworks(names: str | None) -> list[str]:
    """The frameworks asked for, or every one whose backend is installed."""
    from harness import registry

    if names:
        chosen = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in FRAMEWORKS]
        if unknown:
            raise SystemExit(f"--backends: {', '.join(unknown)} unknown; choose from {FRAMEWORKS}")
        missing = [n for n in chosen if not registry.is_available(n)]
        if missing:
            raise SystemExit(f"--backends: {', '.join(missing)} not installed here")
        return chosen
    return [n for n in FRAMEWORKS if registry.is_available(n)]


def summarize(results: dict[str, list[dict]], frameworks: list[str], args) -> dict:
    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    step = {fw: median(f"{fw}-harness", "step_s") for fw in frameworks}
    fastest = min(step, key=step.get)
    fastest_images = args.batch / step[fastest]
    achieved = median(f"{fastest}-harness", "train_flops_per_image") * args.batch / step[fastest]
    peak = median(f"{fastest}-harness", "matmul_peak_flops")
    return {
        "workload": f"WRN-{args.depth}-{args.width}, batch {args.batch}, fp32, CPU threads {os.cpu_count()}",
        "step_s": {kind: median(kind, "step_s") for kind in results if kind != "pipeline"},
        "harness_over_minimal": {fw: step[fw] / median(f"{fw}-minimal", "step_s") for fw in step},
        "fastest_backend": fastest,
        "pipeline_images_per_sec": median("pipeline", "images_per_sec"),
        "pipeline_over_fastest_backend": median("pipeline", "images_per_sec") / fastest_images,
        "achieved_tflops": achieved / 1e12,
        "matmul_peak_tflops": peak / 1e12,
        "fraction_of_matmul_peak": achieved / peak,
    }


if __name__ == "__main__":
    main()
