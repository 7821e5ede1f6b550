"""SIGHUP makes a gateway with a static config read it again (`core.Gateway.reload_static`):
`kubefal run`'s control plane rewrites the file on `fal apps scale` and `fal keys`. A file that
does not load, wherever in it the error is, changes nothing: no app of it is half applied. A
SIGHUP that comes while the gateway is still starting does not end it (it is kept and served
once the gateway runs).
"""

from __future__ import annotations

import contextlib
import pathlib
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from testkit import waiting
from testkit.redis import RedisServer
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


class _HeldRelay:
    """A TCP relay to ``target`` that holds every connection until ``release``: a Redis the
    gateway reaches but that does not answer yet keeps the gateway in its start-up."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.released = threading.Event()
        self.connected = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                self.connected.set()
                threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        self.released.wait(timeout=120)
        server = socket.create_connection(self.target, timeout=30)
        self.sockets += [client, server]
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for each in self.sockets:
            each.close()


def test_a_sighup_during_start_up_does_not_end_the_gateway(
    tmp_path: pathlib.Path, redis_server: RedisServer
) -> None:
    relay = _HeldRelay(("127.0.0.1", redis_server.port))
    process = gwharness.Gateway(
        workdir=tmp_path,
        static_config={"apps": [APP_ONE]},
        tls=None,
        store=f"redis://127.0.0.1:{relay.port}/0",
    )
    try:
        with gwharness.cleanup(process):
            # the gateway opens its store, held by the relay: it is starting, not yet serving
            assert relay.connected.wait(timeout=120), process.output()
            _reload(process, {"apps": [APP_ONE, APP_TWO]})
            relay.released.set()
            process.wait_ready()

            assert process.alive()
            waiting.wait_for(
                lambda: _scaling_status(process, "test/two") == 200,
                timeout=60,
                description="test/two, written before that SIGHUP, served",
            )
    finally:
        relay.close()
