"""The Trax backend, checked in a process of its own: `import trax` takes a minute.

Each test here asserts on one check of tests/trax_checks.py, which conftest.py
starts in the background once collection has selected a test of this module,
so that the import and the checks run while the rest of the suite does. A check
that fails shows its own message; one that never ran shows the end of the
checks' log. The Trax backend is left out of the in-process contract tests
(tests/test_backends.py, tests/test_parity.py); these checks cover the same
ground for it.
"""

import pytest

from harness import registry
from tests import trax_checks

pytestmark = [
    pytest.mark.skipif(not registry.is_available("trax"), reason="trax not installed"),
    pytest.mark.timeout(trax_checks.WAIT_S + 60),
]


@pytest.fixture(scope="module")
def report() -> dict:
    return trax_checks.wait()


@pytest.mark.parametrize("name", list(trax_checks.CHECKS))
def test_trax_check(report, name):
    result = report["checks"].get(name)
    if result is None:
        pytest.fail(
            f"check {name} did not run (checks exited with {report['returncode']}):\n"
            + report["log_tail"]
        )
    if result.get("skipped"):
        pytest.skip(result["message"])
    assert result["ok"], result["message"]


def test_the_checks_ran_to_the_end(report):
    assert report.get("done"), f"exit code {report['returncode']}:\n{report['log_tail']}"
