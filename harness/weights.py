"""The framework-neutral weight format: every tensor of a spec under its canonical name.

A weights file is a ``.npz`` archive with one float32 array per entry of
``spec.params`` (parameters and batch-norm running statistics), in the spec's
layouts (convolution kernels HWIO, dense kernels (in, out)), and one entry
``__spec__``: a JSON string of the depth, width, dropout and class count the
weights were made for. Backends read and write it through their
``export_weights`` and ``import_weights``; nothing here imports a framework.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from harness.spec import HE_NORMAL, ONES, UNIFORM_FAN_IN, ZEROS, Param, WRNSpec

SPEC_KEY = "__spec__"
# Dropout has no weights, so weights made for one dropout rate fit any other.
_SHAPE_FIELDS = ("depth", "width", "num_classes")


class WeightsError(ValueError):
    """Weights that do not fit a spec; the message names each tensor at fault."""


def check_weights(weights: dict[str, np.ndarray], spec: WRNSpec) -> dict[str, np.ndarray]:
    """The spec's tensors as float32 arrays, or a :class:`WeightsError` listing every misfit."""
    expected = {p.name: p for p in spec.params}
    problems = []
    missing = [name for name in expected if name not in weights]
    extra = sorted(set(weights) - set(expected))
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing)}")
    if extra:
        problems.append(f"not in {spec.name} ({len(extra)}): {', '.join(extra)}")
    problems += [
        f"{name} has shape {np.shape(weights[name])}, the spec has {param.shape}"
        for name, param in expected.items()
        if name in weights and np.shape(weights[name]) != param.shape
    ]
    if problems:
        raise WeightsError(f"weights do not fit {spec.name}: " + "; ".join(problems))
    return {name: np.asarray(weights[name], dtype=np.float32) for name in expected}


def save_weights(path: str | Path, weights: dict[str, np.ndarray], spec: WRNSpec) -> Path:
    """Write a complete set of weights for ``spec``; refuses an incomplete one."""
    arrays = check_weights(weights, spec)
    meta = {field: getattr(spec, field) for field in (*_SHAPE_FIELDS, "dropout")}
    path = Path(path)
    with path.open("wb") as file:  # a file object keeps numpy from appending .npz
        np.savez(file, **arrays, **{SPEC_KEY: np.array(json.dumps(meta))})
    return path


def load_weights(path: str | Path, spec: WRNSpec) -> dict[str, np.ndarray]:
    """Read a weights file and check every name and shape against ``spec``."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(str(arrays.pop(SPEC_KEY))) if SPEC_KEY in arrays else {}
    made_for = {k: meta[k] for k in _SHAPE_FIELDS if k in meta and meta[k] != getattr(spec, k)}
    if made_for:
        wanted = {k: getattr(spec, k) for k in made_for}
        raise WeightsError(f"{path} holds weights for {made_for}, not {spec.name} {wanted}")
    try:
        return check_weights(arrays, spec)
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from None


def init_weights(spec: WRNSpec, seed: int, nontrivial: bool = False) -> dict[str, np.ndarray]:
    """A complete set of weights drawn in numpy from the spec's init descriptors.

    ``nontrivial`` also moves every tensor that would start as all zeros or all
    ones (batch-norm scale, bias and running statistics, the dense bias) to a
    random spread around that value, so that a comparison of backends cannot
    pass merely because those tensors do nothing.
    """
    rng = np.random.default_rng(seed)
    return {p.name: _draw(p, rng, nontrivial).astype(np.float32) for p in spec.params}


def _draw(param: Param, rng: np.random.Generator, nontrivial: bool) -> np.ndarray:
    if param.init == HE_NORMAL:
        return rng.normal(0.0, math.sqrt(2.0 / param.fan_in), param.shape)
    if param.init == UNIFORM_FAN_IN:
        bound = 1.0 / math.sqrt(param.fan_in)
        return rng.uniform(-bound, bound, param.shape)
    if param.init == ZEROS:
        return rng.normal(0.0, 0.2, param.shape) if nontrivial else np.zeros(param.shape)
    if param.init == ONES:
        # Stays positive: a running variance must be.
        return rng.uniform(0.5, 1.5, param.shape) if nontrivial else np.ones(param.shape)
    raise ValueError(f"{param.name}: unknown initialiser {param.init!r}")
