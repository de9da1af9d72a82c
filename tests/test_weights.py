"""The framework-neutral weight format and the numpy initialisation."""

import subprocess
import sys

import numpy as np
import pytest

from harness.spec import HE_NORMAL, UNIFORM_FAN_IN, WRNSpec
from harness.weights import WeightsError, init_weights, load_weights, save_weights

SPEC = WRNSpec(10, 2)


def test_saved_weights_load_back_exactly_with_the_spec_recorded(tmp_path):
    weights = init_weights(SPEC, seed=3, nontrivial=True)
    path = save_weights(tmp_path / "wrn.npz", weights, SPEC)

    loaded = load_weights(path, SPEC)
    assert list(loaded) == [p.name for p in SPEC.params]
    for name, value in weights.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
        assert loaded[name].dtype == np.float32
    with np.load(path) as archive:
        assert '"depth": 10' in str(archive["__spec__"])


def test_weights_for_another_dropout_rate_fit(tmp_path):
    path = save_weights(tmp_path / "wrn.npz", init_weights(SPEC, 0), SPEC)
    assert len(load_weights(path, WRNSpec(10, 2, dropout=0.3))) == len(SPEC.params)


def test_weights_of_another_network_are_refused_naming_both(tmp_path):
    path = save_weights(tmp_path / "wrn.npz", init_weights(SPEC, 0), SPEC)
    with pytest.raises(WeightsError, match=r"'width': 2.*WRN-10-4"):
        load_weights(path, WRNSpec(10, 4))


def test_every_missing_extra_and_misshapen_tensor_is_named(tmp_path):
    weights = init_weights(SPEC, 0)
    del weights["head.bn.var"], weights["stem.conv.kernel"]
    weights["head.extra.bias"] = np.zeros(3, np.float32)
    weights["head.dense.bias"] = np.zeros(11, np.float32)
    with pytest.raises(WeightsError) as caught:
        save_weights(tmp_path / "bad.npz", weights, SPEC)
    message = str(caught.value)
    for expected in (
        "missing 2: stem.conv.kernel, head.bn.var",
        "head.extra.bias",
        "head.dense.bias has shape (11,), the spec has (10,)",
    ):
        assert expected in message
    assert not (tmp_path / "bad.npz").exists()


def test_a_file_with_a_tensor_missing_is_refused_with_its_path(tmp_path):
    weights = init_weights(SPEC, 0)
    path = tmp_path / "partial.npz"
    np.savez(path, **{k: v for k, v in weights.items() if k != "group1.block1.bn1.mean"})
    with pytest.raises(WeightsError, match=r"partial\.npz.*missing 1: group1\.block1\.bn1\.mean"):
        load_weights(path, SPEC)


def test_init_draws_follow_the_spec_descriptors_and_the_seed():
    spec = WRNSpec(16, 4)
    weights = init_weights(spec, seed=0)
    for param in spec.params:
        value = weights[param.name]
        assert value.shape == param.shape and value.dtype == np.float32
        if param.init == HE_NORMAL and param.size >= 10_000:
            assert value.std() == pytest.approx(np.sqrt(2 / param.fan_in), rel=0.05)
        elif param.init == UNIFORM_FAN_IN:
            assert np.abs(value).max() <= 1 / np.sqrt(param.fan_in)
        elif param.init in ("zeros", "ones"):
            assert np.all(value == (1.0 if param.init == "ones" else 0.0)), param.name

    again, other = init_weights(spec, seed=0), init_weights(spec, seed=1)
    kernel = "group2.block1.conv1.kernel"
    np.testing.assert_array_equal(again[kernel], weights[kernel])
    assert not np.array_equal(other[kernel], weights[kernel])


def test_nontrivial_init_moves_every_constant_tensor_and_keeps_variances_positive():
    weights = init_weights(SPEC, seed=0, nontrivial=True)
    for param in SPEC.params:
        if param.init in ("zeros", "ones"):
            assert weights[param.name].std() > 0.05, param.name
        if param.name.endswith(".var"):
            assert weights[param.name].min() > 0, param.name


def test_the_weight_format_imports_no_framework():
    code = "import sys, harness.weights; print(sorted({'torch', 'jax', 'flax'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
