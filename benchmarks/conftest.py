"""pytest-benchmark suite: ``pytest benchmarks -m benchmark``.

Machine info is extended with the versions of every installed backend's
libraries, the device and the precision, so that ``--benchmark-compare``
across commits and machines compares like with like.
"""

from __future__ import annotations

import pytest

from harness import metadata, registry


def pytest_addoption(parser):
    group = parser.getgroup("wrnbench")
    group.addoption("--wrn", default="16-4", help="depth-width of the benchmarked WRN [16-4]")
    group.addoption("--wrn-batch", type=int, default=128, help="batch size [128]")
    group.addoption("--wrn-device", default="cpu", help="cpu or cuda [cpu]")
    group.addoption("--wrn-precision", default="fp32", help="fp32 or bf16 [fp32]")


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.benchmark)


def pytest_benchmark_update_machine_info(config, machine_info):
    versions = {}
    for name in registry.names():
        if registry.info(name).module.startswith("backends.") and registry.is_available(name):
            versions[name] = registry.load(name).versions()
    machine_info["wrnbench"] = {
        "backend_versions": versions,
        "device": config.getoption("--wrn-device"),
        "precision": config.getoption("--wrn-precision"),
        "workload": f"WRN-{config.getoption('--wrn')}, batch {config.getoption('--wrn-batch')}",
        "cpu_model": metadata.cpu_model(),
        "cpu_count": metadata.usable_cpus(),
        "git": dict(zip(("commit", "dirty"), metadata.git_state(), strict=True)),
    }


@pytest.fixture(scope="session")
def workload(request):
    depth, width = (int(v) for v in request.config.getoption("--wrn").split("-"))
    return {
        "depth": depth,
        "width": width,
        "batch": request.config.getoption("--wrn-batch"),
        "device": request.config.getoption("--wrn-device"),
        "precision": request.config.getoption("--wrn-precision"),
    }
