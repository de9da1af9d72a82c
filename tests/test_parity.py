"""Backends agree with the torch reference, and the parity check catches real bugs.

Every registered backend that builds the spec is compared with torch, so a new
backend is covered here as soon as it is in the registry and installed; one
whose import takes long (``slow_import``, Trax) only through the command line,
in a child process, marked slow.
"""

import numpy as np
import pytest

from harness import cli, parity, registry
from harness.config import ConfigError
from harness.data import synthetic
from harness.spec import WRNSpec
from harness.weights import init_weights
from tests.conftest import wrnbench

REFERENCE = "torch"


def _others(in_process: bool) -> list:
    """Every other backend of the spec; one slow to import only in a child process, as slow."""
    params = []
    for name in registry.names():
        info = registry.info(name)
        if name == REFERENCE or "spec" not in info.models:
            continue
        slow = getattr(info, "slow_import", False)
        if in_process and slow:
            continue
        installed = registry.is_available(name) and registry.is_available(REFERENCE)
        marks = [pytest.mark.skipif(not installed, reason=f"{name} or {REFERENCE} not installed")]
        params.append(pytest.param(name, marks=[*marks, pytest.mark.slow] if slow else marks))
    return params


needs_jax = pytest.mark.skipif(
    not (registry.is_available("jax") and registry.is_available(REFERENCE)),
    reason="jax or torch not installed",
)
QUANTITIES = {
    "eval logits",
    "train loss",
    "step: conv kernels",
    "step: BN scale",
    "step: BN bias",
    "step: BN running mean",
    "step: BN running var",
    "step: dense kernel",
    "step: dense bias",
}


@pytest.mark.parametrize("backend", _others(in_process=True))
@pytest.mark.parametrize(("depth", "width"), [(10, 1), (10, 2)])
def test_backend_computes_what_torch_computes(backend, depth, width):
    report = parity.run_parity([REFERENCE, backend], WRNSpec(depth, width))
    rows = report.differences[backend]
    assert {row.quantity for row in rows} == QUANTITIES
    assert report.passed, report.table()


@pytest.mark.parametrize("backend", _others(in_process=False))
def test_parity_command_prints_the_table_and_exits_0(backend):
    result = wrnbench(
        "parity",
        "--backends",
        f"torch,{backend}",
        "--depth",
        "10",
        "--width",
        "1",
        "--dropout",
        "0.3",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{backend} vs torch" in result.stdout and "parity: ok" in result.stdout


def tolerance(spec: WRNSpec) -> parity.Tolerance:
    return parity.Tolerance(parity.default_kink_rtol(spec, parity.DEFAULT_BATCH))


@pytest.fixture(scope="module")
def torch_reference():
    """torch's outputs for WRN-10-1, computed once for the deliberately broken backends."""
    spec = WRNSpec(10, 1)
    weights = init_weights(spec, seed=0, nontrivial=True)
    batch = synthetic(parity.DEFAULT_BATCH, 1).train
    outputs = parity.backend_outputs(REFERENCE, spec, weights, batch.images, batch.labels, 0)
    return spec, weights, batch, outputs


def _biased_running_variance(jax_backend):
    moments = jax_backend._moments

    def biased(x, mask):  # a huge count makes the n / (n - 1) correction 1
        mean, var, _ = moments(x, mask)
        return mean, var, np.float32(1e30)

    return biased


def _no_gradient_through_batch_statistics(jax_backend):
    import jax

    moments = jax_backend._moments

    def frozen(x, mask):
        mean, var, count = moments(x, mask)
        return jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var), count

    return frozen


BUGS = [
    # Keras's default epsilon, a hundred times the spec's.
    pytest.param("BN_EPSILON", lambda _: 1e-3, {"eval logits"}, id="epsilon-1e-3"),
    pytest.param(
        "_moments", _biased_running_variance, {"step: BN running var"}, id="biased-running-var"
    ),
    # Forward and statistics unchanged: only the kinked tier can see it.
    pytest.param(
        "_moments",
        _no_gradient_through_batch_statistics,
        {"step: conv kernels", "step: BN bias"},
        id="no-gradient-through-batch-statistics",
    ),
]


@needs_jax
@pytest.mark.parametrize(("attribute", "wrong", "caught_in"), BUGS)
def test_the_tolerance_catches_a_wrong_batch_norm(
    torch_reference, monkeypatch, attribute, wrong, caught_in
):
    from backends import jax_backend

    spec, weights, batch, reference = torch_reference
    monkeypatch.setattr(jax_backend, attribute, wrong(jax_backend))
    broken = parity.backend_outputs("jax", spec, weights, batch.images, batch.labels, 0)
    rows = parity.compare(broken, reference, weights, tolerance(spec))
    failed = {row.quantity for row in rows if not row.passed}
    assert caught_in <= failed
    assert min(row.of_allowed for row in rows if row.quantity in caught_in) > 10


@needs_jax
def test_parity_command_exits_1_when_a_backend_disagrees(monkeypatch, capsys):
    from backends import jax_backend

    # flax's meaning of momentum (the old value's weight) given to torch's.
    monkeypatch.setattr(jax_backend, "BN_MOMENTUM", 0.9)
    assert cli.main(["parity", "--backends", "torch,jax", "--depth", "10", "--width", "1"]) == 1
    out = capsys.readouterr().out
    failed = [line.split("  ")[0] for line in out.splitlines() if " FAIL " in line]
    assert failed == ["step: BN running mean", "step: BN running var"]
    assert out.rstrip().endswith("parity: FAILED, above the tolerance")


def test_a_step_may_differ_by_the_rounding_of_the_stored_weights_and_no_more():
    name = "stem.conv.kernel"
    before = {name: np.array([1.0, 0.5], np.float32)}
    step = np.float32(1e-4)
    ulp = np.spacing(np.float32(1.0))

    def outputs(after):
        return parity.Outputs(np.zeros((1, 2)), 1.0, {name: np.asarray(after, np.float32)})

    # rtol x step is far below one unit in the last place of the weights here,
    # so only the rounding allowance lets the one-ulp difference pass.
    reference = outputs(before[name] + step)
    rounded = outputs(before[name] + step + np.array([ulp, 0], np.float32))
    wrong = outputs(before[name] + step + np.array([3 * ulp, 0], np.float32))
    strict = parity.Tolerance(kink_rtol=parity.DEFAULT_RTOL)
    assert all(row.passed for row in parity.compare(rounded, reference, before, strict))
    failed = [row for row in parity.compare(wrong, reference, before, strict) if not row.passed]
    assert [row.quantity for row in failed] == ["step: conv kernels"]


def test_parity_needs_two_backends():
    with pytest.raises(ConfigError, match="two or more"):
        parity.run_parity(["torch"], WRNSpec(10, 1))
