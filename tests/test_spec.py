import math

import pytest

from harness.spec import HE_NORMAL, SpecError, WRNSpec


@pytest.mark.parametrize(
    ("depth", "width", "count"),
    [(40, 4, 8_949_210), (16, 4, 2_748_890), (28, 10, 36_479_194)],
)
def test_param_count_matches_the_papers_table_4(depth, width, count):
    assert WRNSpec(depth, width).param_count == count


def test_param_count_does_not_depend_on_dropout():
    assert WRNSpec(16, 4, 0.3).param_count == WRNSpec(16, 4).param_count


def test_small_network_counted_by_hand():
    # WRN-10-1: stem 432; group1 (16->16, identity) 2*32 + 2*2304;
    # group2 (16->32, stride 2) bn 32 + 4608 + bn 64 + 9216 + shortcut 512;
    # group3 (32->64) bn 64 + 18432 + bn 128 + 36864 + shortcut 2048;
    # head bn 128 + dense 640 + 10.
    by_hand = 432 + (64 + 4608) + (32 + 4608 + 64 + 9216 + 512)
    by_hand += (64 + 18432 + 128 + 36864 + 2048) + (128 + 650)
    assert WRNSpec(10, 1).param_count == by_hand


def test_blocks_follow_the_paper():
    spec = WRNSpec(16, 4)
    assert spec.blocks_per_group == 2
    shapes = [(b.in_channels, b.out_channels, b.stride, b.in_size, b.out_size) for b in spec.blocks]
    assert shapes == [
        (16, 64, 1, 32, 32),
        (64, 64, 1, 32, 32),
        (64, 128, 2, 32, 16),
        (128, 128, 1, 16, 16),
        (128, 256, 2, 16, 8),
        (256, 256, 1, 8, 8),
    ]
    assert [b.projection for b in spec.blocks] == [True, False, True, False, True, False]


def test_width_one_first_block_has_identity_shortcut():
    assert not WRNSpec(10, 1).blocks[0].projection


def test_params_have_unique_canonical_names_and_only_bn_stats_are_untrainable():
    spec = WRNSpec(22, 2)
    names = [p.name for p in spec.params]
    assert len(names) == len(set(names))
    untrainable = {p.name.rsplit(".", 1)[1] for p in spec.params if not p.trainable}
    assert untrainable == {"mean", "var"}
    assert all(
        p.init == HE_NORMAL
        for p in spec.params
        if p.name.endswith("kernel") and "dense" not in p.name
    )
    assert not any(p.name.endswith(".conv1.bias") for p in spec.params)


def test_layer_table_adds_up_to_the_spec():
    spec = WRNSpec(16, 4, 0.3)
    assert sum(layer.params for layer in spec.layers) == spec.param_count
    assert spec.layers[-1].out_shape == (1, 1, 10)
    assert sum(1 for layer in spec.layers if layer.op.startswith("dropout")) == 6
    assert not any(layer.op.startswith("dropout") for layer in WRNSpec(16, 4).layers)


def test_forward_flops_counted_by_hand_for_the_stem_and_head():
    spec = WRNSpec(28, 10)
    stem = next(layer for layer in spec.layers if layer.name == "stem.conv")
    assert stem.macs == 32 * 32 * 16 * 3 * 3 * 3
    assert spec.forward_flops == 2 * sum(layer.macs for layer in spec.layers)
    # WRN-28-10 is commonly quoted at about 5.25 G multiply-adds per image.
    assert math.isclose(spec.forward_macs, 5.2433e9, rel_tol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 15, "width": 4}, "depth must be 6n+4 with n >= 1"),
        ({"depth": 4, "width": 4}, "depth must be 6n+4"),
        ({"depth": 16, "width": 0}, "width must be a whole number >= 1; got 0"),
        ({"depth": 16, "width": 4, "dropout": 1.0}, "dropout must be a rate in [0, 1); got 1"),
        ({"depth": 16, "width": 4, "dropout": -0.1}, "dropout must be a rate in [0, 1)"),
        (
            {"depth": "abc", "width": 4},
            "depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...); got 'abc'",
        ),
        ({"depth": 16, "width": 2.5}, "width must be a whole number >= 1; got 2.5"),
        ({"depth": 16, "width": True}, "width must be a whole number"),
        ({"depth": 16, "width": 4, "dropout": "nan"}, "dropout must be a rate in [0, 1)"),
    ],
)
def test_bad_specs_are_refused_with_what_is_allowed(kwargs, message):
    with pytest.raises(SpecError) as caught:
        WRNSpec(**kwargs)
    assert message in str(caught.value)


def test_every_problem_of_a_spec_is_reported_at_once():
    with pytest.raises(SpecError) as caught:
        WRNSpec("abc", 0, 1.0)
    text = str(caught.value)
    assert "depth" in text and "width" in text and "dropout" in text


def test_strings_from_a_command_line_are_normalised():
    spec = WRNSpec("16", " 4", "0.3")
    assert (spec.depth, spec.width, spec.dropout) == (16, 4, 0.3)
    assert spec == WRNSpec(16, 4, 0.3)
    assert spec.name == "WRN-16-4"


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        WRNSpec(16, 4).depth = 22
