import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def task_identity():
    """Inside a ServerApp, Flower sets the task's identity; messages cannot be created without it."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


REQUIRE_ALL = os.environ.get("FEDGE_REQUIRE_ALL") == "1"
"""Set by .ci/run: in CI every test runs; one that would be skipped (mosquitto or an optional runtime missing)
fails instead of being quietly left out."""


def _required(report, what: str) -> None:
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = (
        f"{what} would have been skipped ({reason}), but FEDGE_REQUIRE_ALL=1 requires every test to run: "
        "install what it needs (.ci/run does)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        _required(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped:
        _required(report, collector.nodeid)


INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config, items):
    """Slow tests live in tests/integration/ and carry the ``integration`` mark, so ``pytest -m "not integration"`` is
    the fast loop: a test marked elsewhere is a layout error, and every test in that folder gets the mark."""
    misplaced = []
    for item in items:
        inside = INTEGRATION in Path(str(item.path)).parents
        if inside:
            item.add_marker(pytest.mark.integration)
        elif item.get_closest_marker("integration") is not None:
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError(
            "tests marked integration must live in tests/integration/ (the fast loop is -m 'not integration'): "
            + ", ".join(misplaced)
        )
