import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backends.torch_backend import PreActBlock, TorchTrainer, WideResNet  # noqa: E402
from harness.backend import DeviceUnavailable  # noqa: E402
from harness.config import RunConfig  # noqa: E402
from harness.data import synthetic  # noqa: E402
from harness.spec import WRNSpec  # noqa: E402


@pytest.mark.parametrize(("depth", "width"), [(10, 1), (16, 4), (22, 2)])
def test_forward_gives_one_logit_per_class(depth, width):
    model = WideResNet(WRNSpec(depth, width)).eval()
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 10)


def test_module_names_are_the_canonical_names():
    spec = WRNSpec(16, 2)
    names = set(WideResNet(spec).state_dict())
    assert "group2.block1.shortcut.weight" in names
    assert "group2.block2.shortcut.weight" not in names
    assert "head.dense.bias" in names and "stem.conv.weight" in names
    assert not any(name.endswith("conv1.bias") for name in names)


def test_projection_shortcut_sees_the_bn_relu_input_and_identity_sees_the_raw_input():
    spec = WRNSpec(10, 2)
    projection = PreActBlock(spec.blocks[0], 0.0).eval()
    identity = PreActBlock(WRNSpec(10, 1).blocks[0], 0.0).eval()
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        for conv in (projection.conv2, identity.conv2):
            conv.weight.zero_()  # residual branch outputs 0, leaving the shortcut
        np.testing.assert_allclose(identity(x), x, atol=0)
        expected = projection.shortcut(torch.relu(projection.bn1(x)))
        np.testing.assert_allclose(projection(x), expected, atol=1e-6)


def test_dropout_acts_in_training_only():
    model = WideResNet(WRNSpec(10, 1, dropout=0.5))
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_channels_last_computes_the_same_step():
    data = synthetic(64, 64)
    images, labels = data.train.images[:16], data.train.labels[:16]
    config = RunConfig(depth=10, width=1, steps=1, dataset="synthetic")
    plain = TorchTrainer(config)
    fast = TorchTrainer(config.replace(channels_last=True))
    fast.import_weights(plain.export_weights())
    loss_plain = float(plain.train_step(images, labels, 0.1))
    loss_fast = float(fast.train_step(images, labels, 0.1))
    assert loss_fast == pytest.approx(loss_plain, rel=1e-5)
    for name, value in fast.export_weights().items():
        np.testing.assert_allclose(
            value, plain.export_weights()[name], rtol=1e-4, atol=1e-5, err_msg=name
        )


def test_sgd_is_nesterov_with_coupled_weight_decay_and_adam_matches_trax_decay():
    config = RunConfig(depth=10, width=1, steps=1, dataset="synthetic")
    group = TorchTrainer(config).optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 5e-4)
    adam = TorchTrainer(config.replace(optimizer="adam")).optimizer.param_groups[0]
    assert adam["lr"] * adam["weight_decay"] == pytest.approx(1e-5)
    assert adam["eps"] == 1e-5


def test_bf16_on_cpu_is_refused_before_anything_runs():
    from harness.config import ConfigError

    with pytest.raises(ConfigError, match="bf16 needs a CUDA device"):
        RunConfig(precision="bf16")


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceUnavailable, match="torch sees no CUDA device"):
        TorchTrainer(RunConfig(device="cuda", dataset="synthetic"))


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one():
    data = synthetic(64, 64)
    images, labels = data.train.images[:16], data.train.labels[:16]
    config = RunConfig(depth=10, width=1, steps=1, dataset="synthetic")
    eager, compiled = TorchTrainer(config), TorchTrainer(config.replace(compile=True))
    compiled.import_weights(eager.export_weights())
    for _ in range(2):
        loss_eager = float(eager.train_step(images, labels, 0.1))
        loss_compiled = float(compiled.train_step(images, labels, 0.1))
        assert loss_compiled == pytest.approx(loss_eager, rel=1e-4)
