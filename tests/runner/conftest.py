"""Fixtures for the runner tests: real `python -m kubefal_runner` processes on free loopback ports.

Every runner serves one of the example apps in ``apps/``, keeps its output in the test's temp dir
(its tail is printed when the test fails) and is always killed at teardown.
"""

from __future__ import annotations

import collections.abc
import pathlib
import sys

import pytest

from testkit import runners

APPS_DIR = pathlib.Path(__file__).parent / "apps"
OUTPUT_TAIL_CHARS = 6000


@pytest.fixture
def start_runner(
    tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> collections.abc.Iterator[runners.RunnerFactory]:
    """Start runners: ``start_runner("echo_app.py::EchoApp", extra_env={...})``.

    A ``file.py`` is looked up in ``apps/``; a ``package.module`` reference is passed unchanged.
    """
    started: list[runners.RunnerProcess] = []

    def start(
        app: str,
        *,
        extra_args: collections.abc.Sequence[str] = (),
        extra_env: collections.abc.Mapping[str, str] | None = None,
        tls_ca: pathlib.Path | None = None,
    ) -> runners.RunnerProcess:
        location, _, class_name = app.rpartition("::")
        if location.endswith(".py"):
            app = f"{APPS_DIR / location}::{class_name}"
        runner = runners.RunnerProcess(
            app_ref=app,
            workdir=tmp_path,
            extra_args=extra_args,
            extra_env=extra_env,
            tls_ca=tls_ca,
        )
        started.append(runner)
        return runner

    yield start
    call_report = getattr(request.node, "rep_call", None)
    for runner in started:
        runner.kill()
        if call_report is not None and call_report.failed:
            tail = runner.output()[-OUTPUT_TAIL_CHARS:]
            sys.stderr.write(f"--- runner on port {runner.port} (tail) ---\n{tail}\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> collections.abc.Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the item so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
