"""SIGHUP makes a gateway with a static config read it again (`core.Gateway.reload_static`):
`kubefal run`'s control plane rewrites the file on `fal apps scale` and `fal keys`. A file that
does not load, wherever in it the error is, changes nothing: no app of it is half applied.
"""

from __future__ import annotations

import pathlib
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from testkit import waiting
from tests.gateway import gwharness

APP_ONE = {"id": "test/one", "auth": "public", "runners": ["http://127.0.0.1:9"]}
APP_TWO = {"id": "test/two", "auth": "public", "runners": ["http://127.0.0.1:9"]}


@pytest.fixture
def gateway(tmp_path: pathlib.Path) -> Iterator[gwharness.Gateway]:
    process = gwharness.Gateway(workdir=tmp_path, static_config={"apps": [APP_ONE]}, tls=None)
    with gwharness.cleanup(process):
        process.wait_ready()
        yield process


def _scaling_status(gateway: gwharness.Gateway, app_id: str) -> int:
    return httpx.get(f"{gateway.admin_url}/_kubefal/apps/{app_id}/scaling", timeout=10).status_code


def _reload(gateway: gwharness.Gateway, config: Any) -> None:
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    gateway.config_path.write_text(text)
    gateway.popen.send_signal(signal.SIGHUP)


def _wait_refused(gateway: gwharness.Gateway) -> None:
    waiting.wait_for(
        lambda: "not reloaded" in gateway.stderr_path.read_text(errors="replace"),
        timeout=60,
        description="the gateway logs the refused reload",
        describe_last=gateway.output,
    )


def test_sighup_applies_a_rewritten_static_config(gateway: gwharness.Gateway) -> None:
    assert _scaling_status(gateway, "test/two") == 404
    _reload(gateway, {"apps": [APP_ONE, APP_TWO]})
    waiting.wait_for(
        lambda: _scaling_status(gateway, "test/two") == 200,
        timeout=60,
        description="test/two served after SIGHUP",
    )
    assert gateway.alive()


def test_a_file_with_a_bad_later_entry_changes_nothing(gateway: gwharness.Gateway) -> None:
    bad = {"id": "test/three", "auth": "public", "runners": ["ftp://127.0.0.1:9"]}
    _reload(gateway, {"apps": [APP_ONE, APP_TWO, bad]})
    _wait_refused(gateway)
    # test/two comes before the bad entry: applying it would leave a half-loaded config.
    assert _scaling_status(gateway, "test/two") == 404
    assert _scaling_status(gateway, "test/one") == 200
    assert gateway.alive()


def test_a_file_that_is_not_yaml_is_refused_and_logged(gateway: gwharness.Gateway) -> None:
    _reload(gateway, "apps: [unclosed\n")
    _wait_refused(gateway)
    assert _scaling_status(gateway, "test/one") == 200
    assert gateway.alive()
