"""Fixtures of the CLI tests: the test apps, a CliRunner, an isolated kubefal state directory,
and waiting for a condition with a timeout (no sleeps in tests)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Protocol

import click.testing
import pytest

from testkit import waiting

APPS = pathlib.Path(__file__).parent / "apps"


class WaitFor(Protocol):
    def __call__(
        self, predicate: Callable[[], bool], *, timeout: float, description: str
    ) -> None: ...


@pytest.fixture
def wait_for() -> WaitFor:
    return waiting.wait_for


@pytest.fixture
def apps_dir() -> pathlib.Path:
    return APPS


@pytest.fixture
def cli_runner() -> click.testing.CliRunner:
    return click.testing.CliRunner()


@pytest.fixture(autouse=True)
def isolated_state(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    """Keep the local CA and key of every test in its own directory."""
    state = tmp_path / "kubefal-home"
    monkeypatch.setenv("KUBEFAL_HOME", str(state))
    return state
