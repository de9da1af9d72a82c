"""Train steps of every backend, their minimal loops, and the data pipeline.

Each benchmark times one call and synchronises the device inside it, so that
pytest-benchmark's clock reads device time, not dispatch time. The first
calls (compilation) are warm-up rounds, outside the statistics.
"""

from __future__ import annotations

import pytest

from harness import registry
from harness.config import RunConfig
from harness.data import TrainBatches, synthetic

BACKENDS = [
    pytest.param(
        n, marks=pytest.mark.skipif(not registry.is_available(n), reason=f"{n} not installed")
    )
    for n in registry.names()
    if registry.info(n).module.startswith("backends.")
]
ROUNDS, WARMUP = 5, 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_harness_train_step(benchmark, backend, workload):
    config = RunConfig(
        backend=backend,
        depth=workload["depth"],
        width=workload["width"],
        batch_size=workload["batch"],
        device=workload["device"],
        precision=workload["precision"],
        dataset="synthetic",
        steps=1,
    )
    trainer = registry.load(backend).create_trainer(config)
    split = synthetic(workload["batch"], 1).train
    images, labels = trainer.device_batch(split.images, split.labels)
    trainer.compile(split.images, split.labels)

    def step():
        trainer.train_step(images, labels, 0.1)
        trainer.sync()

    benchmark.extra_info.update(backend=backend, images_per_step=workload["batch"])
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP)


@pytest.mark.parametrize("framework", ["torch", "jax", "trax"])
def test_minimal_train_step(benchmark, framework, workload):
    pytest.importorskip(framework)
    module = __import__(f"benchmarks.minimal_{framework}", fromlist=["build"])
    step, sync = module.build(
        workload["depth"], workload["width"], workload["batch"], workload["device"]
    )

    def timed():
        step()
        sync()

    benchmark.extra_info.update(framework=framework, images_per_step=workload["batch"])
    benchmark.pedantic(timed, rounds=ROUNDS, warmup_rounds=WARMUP)


@pytest.mark.parametrize("augment", [True, False])
def test_data_pipeline_batch(benchmark, augment, workload):
    split = synthetic(20_000, 1).train
    stream = TrainBatches(split, workload["batch"], seed=0, augment=augment, stop=10**9)
    counter = iter(range(10**9))

    def make():
        return stream.make(next(counter))

    benchmark.extra_info.update(augment=augment, images_per_call=workload["batch"])
    benchmark(make)
