"""A short real-data run learns: well above chance on the real CIFAR-10 test subset."""

import pytest

from harness import runner
from harness.config import RunConfig

pytest.importorskip("torch")


def test_small_wrn_learns_real_cifar10(real_cifar):
    config = RunConfig(
        backend="torch",
        depth=10,
        width=1,
        batch_size=64,
        steps=300,
        eval_every=100,
        data_dir=str(real_cifar),
        threads=2,
    )
    row = runner.run(config, progress=False)
    assert row["status"] == "ok", row["error"]
    assert row["test_images"] == 1000 and row["data_source"] == "cifar10:py"
    accuracies = [point["test_acc"] for point in row["curve"]]
    assert accuracies[-1] > 0.30, accuracies  # chance is 0.10
    assert row["curve"][-1]["train_loss"] < row["curve"][0]["train_loss"]
