import pytest

from harness.config import ConfigError, RunConfig


def test_defaults_are_the_papers_recipe():
    config = RunConfig()
    assert (config.optimizer, config.base_lr, config.batch_size) == ("sgd", 0.1, 128)
    assert config.augment and config.normalize
    assert config.total_steps(50_000) == 200 * 390  # 200 epochs of 390 full batches


def test_sgd_schedule_decays_by_five_at_30_60_80_percent():
    config = RunConfig(steps=1000)
    lrs = [config.lr_at(step, 1000) for step in (0, 299, 300, 599, 600, 799, 800, 999)]
    expected = [0.1, 0.1, 0.02, 0.02, 0.004, 0.004, 0.0008, 0.0008]
    assert lrs == pytest.approx(expected)


def test_sgd_schedule_with_epochs_matches_the_papers_epochs_60_120_160():
    config = RunConfig(epochs=200)
    total = config.total_steps(50_000)
    per_epoch = total // 200
    assert config.lr_at(60 * per_epoch - 1, total) == pytest.approx(0.1)
    assert config.lr_at(60 * per_epoch, total) == pytest.approx(0.02)
    assert config.lr_at(160 * per_epoch, total) == pytest.approx(0.1 * 0.2**3)


def test_adam_is_constant_at_the_tutorials_rate():
    config = RunConfig(optimizer="adam", batch_size=64, steps=5000)
    assert {config.lr_at(step, 5000) for step in (0, 2500, 4999)} == {0.01}


def test_default_evaluates_ten_times():
    assert RunConfig(steps=1000).eval_interval(1000) == 100
    assert RunConfig(steps=5, eval_every=2).eval_interval(5) == 2


def test_strings_are_coerced_to_each_fields_type():
    config = RunConfig.from_dict(
        {"depth": "22", "width": "2", "dropout": "0.3", "augment": "false", "steps": "10"}
    )
    assert (config.depth, config.width, config.dropout, config.augment, config.steps) == (
        22,
        2,
        0.3,
        False,
        10,
    )


def test_every_bad_setting_is_reported_at_once_with_what_is_allowed():
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_dict(
            {
                "depth": "15",
                "optimizer": "rmsprop",
                "batch_size": "0",
                "backend": "mxnet",
                "augment": "maybe",
            }
        )
    text = "\n".join(caught.value.problems)
    assert "depth must be 6n+4" in text
    assert "optimizer must be one of sgd, adam; got 'rmsprop'" in text
    assert "batch_size must be a whole number >= 1; got 0" in text
    assert "backend must be one of torch" in text
    assert "augment must be true or false; got 'maybe'" in text


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": 10, "epochs": 2}, "give steps or epochs, not both"),
        ({"precision": "bf16"}, "precision bf16 needs a CUDA device"),
        ({"device": "tpu"}, "device must be cpu, cuda or cuda:N"),
        ({"lr": "-1"}, "lr must be > 0"),
        ({"depth": "abc"}, "depth must be 6n+4 with n >= 1"),
        ({"seed": "x"}, "seed must be a whole number; got 'x'"),
        ({"model": "trax-zoo"}, "backend torch offers model spec; got 'trax-zoo'"),
        ({"colour": "red"}, "unknown setting 'colour'"),
    ],
)
def test_bad_settings_are_refused(values, message):
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_dict(values)
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def test_identity_hash_ignores_where_the_data_lies_but_not_what_is_computed():
    base = RunConfig(steps=10)
    assert base.config_hash == RunConfig(steps=10, data_dir="/elsewhere").config_hash
    assert base.config_hash == RunConfig(steps=10, lr=0.1).config_hash  # default resolved
    assert base.config_hash != RunConfig(steps=10, seed=1).config_hash
    assert base.config_hash != RunConfig(steps=10, channels_last=True).config_hash
