"""The backend contract, checked for every registered backend whose framework is installed.

A new backend is covered by these tests as soon as it is in the registry.
"""

import numpy as np
import pytest

from harness import registry
from harness.config import RunConfig
from harness.data import synthetic
from harness.spec import HE_NORMAL, UNIFORM_FAN_IN, WRNSpec

BACKENDS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(not registry.is_available(name), reason=f"{name} not installed"),
    )
    for name in registry.names()
    # Backends slow to import (trax: TensorFlow) run these checks in tests/test_trax_backend.py.
    if registry.info(name).module.startswith("backends.") and not registry.info(name).slow_import
]


@pytest.fixture(scope="module")
def batch():
    data = synthetic(64, 64)
    return data.train.images[:32], data.train.labels[:32]


def make_trainer(backend: str, **settings):
    config = RunConfig(
        backend=backend, depth=10, width=1, steps=10, dataset="synthetic", **settings
    )
    return registry.load(backend).create_trainer(config)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("depth", "width"), [(10, 1), (16, 4), (22, 2), (28, 10), (40, 4)])
def test_model_has_exactly_the_specs_parameter_count(backend, depth, width):
    spec = WRNSpec(depth, width, 0.3)
    assert registry.load(backend).count_params(spec) == spec.param_count


@pytest.mark.parametrize("backend", BACKENDS)
def test_trainer_builds_the_spec_and_exports_every_canonical_tensor(backend):
    trainer = make_trainer(backend)
    spec = trainer.config.spec
    assert trainer.param_count() == spec.param_count
    weights = trainer.export_weights()
    assert list(weights) == [p.name for p in spec.params]
    for param in spec.params:
        assert weights[param.name].shape == param.shape, param.name
        assert weights[param.name].dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_initialisation_follows_the_spec(backend):
    config = RunConfig(backend=backend, depth=16, width=4, steps=10, dataset="synthetic")
    weights = registry.load(backend).create_trainer(config).export_weights()
    for param in config.spec.params:
        value = weights[param.name]
        if param.init == HE_NORMAL and param.size >= 10_000:
            assert abs(value.mean()) < 0.05 * np.sqrt(2 / param.fan_in), param.name
            assert value.std() == pytest.approx(np.sqrt(2 / param.fan_in), rel=0.05), param.name
        elif param.init == UNIFORM_FAN_IN:
            bound = 1 / np.sqrt(param.fan_in)
            assert np.abs(value).max() <= bound and value.std() == pytest.approx(
                bound / np.sqrt(3), rel=0.1
            )
        elif param.init != HE_NORMAL:
            expected = 1.0 if param.init == "ones" else 0.0
            np.testing.assert_array_equal(
                value, np.full(param.shape, expected, np.float32), err_msg=param.name
            )


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_round_trip_between_trainers(backend):
    source = make_trainer(backend, seed=1).export_weights()
    target = make_trainer(backend, seed=2)
    target.import_weights(source)
    for name, value in target.export_weights().items():
        np.testing.assert_array_equal(value, source[name], err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_steps_reduce_the_loss_on_a_fixed_batch(backend, batch):
    trainer = make_trainer(backend)
    losses = []
    for _ in range(15):
        losses.append(trainer.to_float(trainer.train_step(*batch, lr=0.1)))
        trainer.sync()
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bn", ["running", "batch"])
def test_evaluation_changes_nothing_and_counts_correctly(backend, batch, bn):
    trainer = make_trainer(backend, dropout=0.3)
    trainer.train_step(*batch, lr=0.05)
    before = trainer.export_weights()
    loss_a, correct_a = trainer.eval_step(*batch, bn=bn)
    loss_b, correct_b = trainer.eval_step(*batch, bn=bn)
    assert (loss_a, correct_a) == pytest.approx((loss_b, correct_b), rel=1e-5)  # no dropout at eval
    assert 0 <= correct_a <= len(batch[1]) and loss_a > 0
    for name, value in trainer.export_weights().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_smaller_last_eval_batch_is_evaluated_whole(backend, batch):
    trainer = make_trainer(backend)
    images, labels = batch
    loss_all, correct_all = trainer.eval_step(images, labels)
    loss_a, correct_a = trainer.eval_step(images[:20], labels[:20])
    loss_b, correct_b = trainer.eval_step(images[20:], labels[20:])
    assert correct_a + correct_b == correct_all
    assert loss_a + loss_b == pytest.approx(loss_all, rel=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_reports_versions_and_device(backend):
    module = registry.load(backend)
    versions = module.versions()
    assert versions and all(isinstance(v, str) for v in versions.values())
    assert make_trainer(backend).device_name()
