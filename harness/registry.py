"""Backends by name, imported only when asked for.

The table below is all the harness knows of a backend before importing it:
enough to validate a configuration without loading a framework. Test-only or
third-party backends can be added with :func:`register`, or for child processes
through the ``WRNBENCH_EXTRA_BACKENDS`` variable (``module:ATTRIBUTE`` pairs,
comma separated, each attribute a :class:`BackendInfo`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.backend import BackendModule
    from harness.config import RunConfig


class BackendUnavailable(RuntimeError):
    """The backend's framework is not installed; the message says how to get it."""


@dataclass(frozen=True)
class BackendInfo:
    name: str
    module: str
    requires: tuple[str, ...]  # importable top-level packages the backend needs
    extra: str  # the pip extra that installs them
    models: tuple[str, ...] = ("spec",)
    # Models the spec's analytic FLOPs describe; for the others no FLOP figures are given.
    spec_flops_models: tuple[str, ...] = ("spec",)
    precisions: tuple[str, ...] = ("fp32", "bf16")
    options: tuple[str, ...] = ()  # backend-specific RunConfig flags it honours
    devices: tuple[str, ...] = ("cpu", "cuda")
    # Importing it takes a minute (Trax imports TensorFlow): tests that import
    # backends in the pytest process leave it to a subprocess of its own.
    slow_import: bool = False


# RunConfig flags that only some backends honour.
BACKEND_OPTIONS = ("channels_last", "compile", "trax_math")

_BACKENDS: dict[str, BackendInfo] = {}


def register(info: BackendInfo) -> None:
    _BACKENDS[info.name] = info


register(
    BackendInfo(
        "torch",
        "backends.torch_backend",
        requires=("torch",),
        extra="torch",
        options=("channels_last", "compile"),
    )
)
register(BackendInfo("jax", "backends.jax_backend", requires=("jax", "flax", "optax"), extra="jax"))
register(
    BackendInfo(
        "trax",
        "backends.trax_backend",
        requires=("trax", "tensorflow"),
        extra="trax",
        models=("spec", "trax-zoo"),
        precisions=("fp32",),
        options=("trax_math",),
        devices=("cpu",),
        slow_import=True,
    )
)


def _register_extras() -> None:
    for entry in filter(None, os.environ.get("WRNBENCH_EXTRA_BACKENDS", "").split(",")):
        module, _, attribute = entry.strip().partition(":")
        register(getattr(importlib.import_module(module), attribute))


_register_extras()


def names() -> list[str]:
    return list(_BACKENDS)


def info(name: str) -> BackendInfo:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(_BACKENDS)}") from None


def spec_flops_apply(backend: str, model: str) -> bool:
    """Whether the spec's FLOPs describe ``model`` of ``backend`` (just 'spec' if unregistered)."""
    if backend not in _BACKENDS:
        return model == "spec"
    return model in _BACKENDS[backend].spec_flops_models


def is_available(name: str) -> bool:
    return all(importlib.util.find_spec(package) is not None for package in info(name).requires)


def load(name: str) -> BackendModule:
    """Import a backend's module, or say plainly what to install."""
    entry = info(name)
    missing = [p for p in entry.requires if importlib.util.find_spec(p) is None]
    if missing:
        raise BackendUnavailable(
            f"backend {name!r} needs {', '.join(missing)}, which is not installed: "
            f"pip install -e '.[{entry.extra}]'"
        )
    return importlib.import_module(entry.module)


def check_options(config: RunConfig) -> list[str]:
    """Problems with the backend-dependent settings of a configuration."""
    if config.backend not in _BACKENDS:
        return [f"backend must be one of {', '.join(_BACKENDS)}; got {config.backend!r}"]
    entry = _BACKENDS[config.backend]
    problems = []
    if config.model not in entry.models:
        problems.append(
            f"backend {entry.name} offers model {', '.join(entry.models)}; got {config.model!r}"
        )
    if config.precision not in entry.precisions:
        problems.append(
            f"backend {entry.name} offers precision {', '.join(entry.precisions)}; got {config.precision!r}"
        )
    if config.device.split(":")[0] not in entry.devices:
        problems.append(
            f"backend {entry.name} runs on {', '.join(entry.devices)}; got {config.device!r}"
        )
    for option in BACKEND_OPTIONS:
        if getattr(config, option) and option not in entry.options:
            problems.append(f"{option} is not an option of backend {entry.name}")
    return problems
