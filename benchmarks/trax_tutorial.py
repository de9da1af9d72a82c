"""The Trax CIFAR-10 tutorial's own training code, run on this machine's CIFAR-10 files.

An independent check of the harness's ``--model trax-zoo`` runs. The tutorial
(the "illustrated WideResnet" notebook of the Trax examples) trains
``tl.Serial(trax.models.WideResnet(), tl.LogSoftmax())`` with Trax's own
``training.Loop``: a ``TrainTask`` with ``tl.CrossEntropyLoss``,
``trax.optimizers.Adam(0.01)`` and a checkpoint every 1000 steps, an
``EvalTask`` of cross-entropy and accuracy over 20 batches, the data piped
through ``trax.data.Shuffle()``, ``Batch(64)`` and ``AddLossWeights()``, on
``trax.fastmath.set_backend('tensorflow-numpy')``. It reports 0.52, 0.60, 0.65,
0.69 and 0.695 eval accuracy at steps 1000 to 5000.

That code runs here as the tutorial writes it, with one change: its streams
come from ``trax.data.TFDS('cifar10', ...)``, which needs a prepared
tensorflow-datasets copy (a download), so here they come from the official-
layout files in ``--data-dir`` and are served as TFDS serves them: each split
in one fixed shuffled order (TFDS shuffles the examples once, when it writes
them), repeated without end, as ``(image, label)`` pairs of uint8 and int64.
The Loop's evaluations therefore see 20 consecutive batches of 64 test images,
the next 1,280 each time, with the model in train mode: batch norm uses each
batch's own statistics.

After the last step the trained weights are evaluated on the whole test set,
in batches of 64 as the harness does with ``--eval-batch-size 64``, both ways:
batch statistics (the tutorial's protocol) and the running averages
(``WideResnet(mode='eval')`` on the same weights and state).

    python -m benchmarks.trax_tutorial --data-dir DIR [--steps 5000]
        [--threads N] [--seed S] [--json results/tutorial/NAME.json]

Every figure printed is also written to ``--json``; step times are the
Loop's own (``Ran N train steps in S secs``, its checkpoint inside them).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# The backend's module comes first: it loads Triton before Trax (see there).
# isort: off
from backends.trax_backend import TRAX_IMPORT_S, start_math
from harness import metadata
from harness.data import Split, eval_batches, load_dataset

import trax
from trax import fastmath, shapes
from trax import layers as tl
from trax.supervised import training

# isort: on

BATCH = 64
EVAL_BATCHES = 20  # the tutorial's n_eval_batches
CHECKPOINT_EVERY = 1000  # the tutorial's n_steps_per_checkpoint
LEARNING_RATE = 0.01
MATH = "tensorflow-numpy"


def stream(split: Split, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The split as TFDS serves it: one fixed shuffled order, repeated without end."""
    order = np.random.default_rng(seed).permutation(len(split))
    labels = split.labels.astype(np.int64)  # tfds's label dtype
    while True:
        for index in order:
            yield split.images[index], labels[index]


def tutorial_loop(train: Split, test: Split, seed: int, output_dir: str) -> training.Loop:
    """The tutorial's pipelines, tasks, model and Loop, fed ``train`` and ``test``."""
    train_pipeline = trax.data.Serial(
        trax.data.Shuffle(), trax.data.Batch(BATCH), trax.data.AddLossWeights()
    )
    eval_pipeline = trax.data.Serial(trax.data.Batch(BATCH), trax.data.AddLossWeights())
    train_task = training.TrainTask(
        labeled_data=train_pipeline(stream(train, seed)),
        loss_layer=tl.CrossEntropyLoss(),
        optimizer=trax.optimizers.Adam(LEARNING_RATE),
        n_steps_per_checkpoint=CHECKPOINT_EVERY,
    )
    eval_task = training.EvalTask(
        labeled_data=eval_pipeline(stream(test, seed + 1)),
        metrics=[tl.CrossEntropyLoss(), tl.Accuracy()],
        n_eval_batches=EVAL_BATCHES,
    )
    model = tl.Serial(trax.models.WideResnet(), tl.LogSoftmax())
    return training.Loop(
        model, train_task, eval_tasks=[eval_task], output_dir=output_dir, random_seed=seed
    )


def whole_test_set(loop: training.Loop, test: Split) -> dict:
    """Loss and accuracy of the trained weights on every test image, both batch-norm ways."""
    # Where the Loop keeps the newest weights (its run_evals reads them from here too).
    trained = loop._trainer_per_task[0].accelerated_model_with_loss
    weights, state = trained.weights[0], trained.state[0]
    signature = shapes.ShapeDtype((BATCH, 32, 32, 3), np.uint8)
    models = {
        "batch": loop.model,  # train mode: each batch's own statistics
        "running": tl.Serial(trax.models.WideResnet(mode="eval"), tl.LogSoftmax()),
    }
    models["running"].init(signature)
    rng = fastmath.random.get_prng(0)
    figures = {}
    for bn, model in models.items():

        def log_probs(images, model=model):
            return model.pure_fn(images, weights, state, rng)[0]

        forward = fastmath.jit(log_probs)
        loss_sum, correct = 0.0, 0
        for images, labels in eval_batches(test, BATCH):
            out = np.asarray(forward(images))
            loss_sum -= float(out[np.arange(len(labels)), labels].sum())
            correct += int((out.argmax(axis=-1) == labels).sum())
        figures[f"test_loss_{bn}_bn"] = loss_sum / len(test)
        figures[f"test_acc_{bn}_bn"] = correct / len(test)
    return figures


def _history(loop: training.Loop, mode: str, metric: str) -> list[list]:
    return [[int(step), float(value)] for step, value in loop.history.get(mode, metric)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0, help="Loop's random seed and data orders")
    parser.add_argument("--threads", type=int, help="CPU threads for TensorFlow and XLA")
    parser.add_argument("--train-size", type=int, help="only the first N (for tests)")
    parser.add_argument("--test-size", type=int)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be positive; got {args.steps}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    start_math(MATH, args.threads)
    data = load_dataset("cifar10", args.data_dir, args.train_size, args.test_size)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trax-tutorial-") as output_dir:
        loop = tutorial_loop(data.train, data.test, args.seed, output_dir)
        loop.run(args.steps)
        wall_s = time.perf_counter() - began
        final = whole_test_set(loop, data.test)

    steps_per_s = _history(loop, "train", "training/steps per second")
    report = {
        "what": "the Trax tutorial's own code (training.Loop), data from --data-dir",
        "steps": args.steps,
        "seed": args.seed,
        "threads": args.threads,
        "trax_math": MATH,
        "batch_size": BATCH,
        "data_source": data.source,
        "train_images": len(data.train),
        "test_images": len(data.test),
        "loop_eval_accuracy": _history(loop, "eval", "metrics/Accuracy"),
        "loop_eval_loss": _history(loop, "eval", "metrics/CrossEntropyLoss"),
        "loop_train_loss": _history(loop, "train", "metrics/CrossEntropyLoss"),
        "loop_seconds_per_step": [[step, 1.0 / rate] for step, rate in steps_per_s],
        **final,
        "wall_s": wall_s,
        "trax_import_s": TRAX_IMPORT_S,
        "versions": {
            name: importlib.metadata.version(name)
            for name in ("trax", "tensorflow", "jax", "jaxlib", "numpy")
        },
        "machine": metadata.machine(),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
