"""A short real-data run learns: well above chance on the real CIFAR-10 test subset.

It runs `wrnbench run` in a process of its own, as a user would, so that the
threads of frameworks imported by other tests do not share its cores.
"""

import json

import pytest

from tests.conftest import wrnbench

pytest.importorskip("torch")


def test_small_wrn_learns_real_cifar10(real_cifar, tmp_path):
    done = wrnbench(
        "run",
        "--backend",
        "torch",
        "--depth",
        "10",
        "--width",
        "1",
        "--batch-size",
        "64",
        "--steps",
        "300",
        "--eval-every",
        "100",
        "--data-dir",
        str(real_cifar),
        "--results",
        str(tmp_path),
        "--json",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert (
        row["status"] == "ok"
        and row["test_images"] == 1000
        and row["data_source"] == "cifar10:py:unofficial"
    )
    accuracies = [point["test_acc"] for point in row["curve"]]
    assert accuracies[-1] > 0.30, accuracies  # chance is 0.10
    assert row["curve"][-1]["train_loss"] < row["curve"][0]["train_loss"]
