"""An idle gateway listener does not wake ten times a second, yet exits at once when asked.

uvicorn's own main loop sleeps 0.1 s between looks at its exit flag; with three listeners that
was most of an idle gateway's wake-ups, and every wake-up is CPU charged to the queue path's
jobs at fal_client's 0.1 s polls (docs/design-decisions.md). `server._Listener` waits on an exit
event instead, with a slow fallback tick.
"""

from __future__ import annotations

import asyncio
import pathlib
import signal
from typing import Any

import pytest
import uvicorn

from kubefal_gateway import server
from tests.gateway import gwharness


async def _app(scope: Any, receive: Any, send: Any) -> None:  # never called: no server started
    raise AssertionError("no request expected")


class CountingListener(server._Listener):
    def __init__(self) -> None:
        config = uvicorn.Config(_app, loop="none", lifespan="off", interface="asgi3")
        config.load()
        super().__init__(config, handshake_timeout=5.0)
        self.ticks = 0

    async def on_tick(self, counter: int) -> bool:
        self.ticks += 1
        return await super().on_tick(counter)


async def test_an_idle_listener_does_not_tick_until_its_fallback_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "LISTENER_TICK_SECONDS", 3600.0)
    listener = CountingListener()
    loop = asyncio.get_running_loop()
    task = loop.create_task(listener.main_loop())
    # A window in which uvicorn's loop (0.1 s) would have ticked five times or more.
    await asyncio.sleep(0.6)
    assert listener.ticks == 1  # the first look, before waiting
    assert not task.done()
    listener.request_exit()
    await asyncio.wait_for(task, timeout=30)  # woken by the request, not by a tick
    assert listener.should_exit and not listener.force_exit
    assert listener.ticks == 2


async def test_a_second_exit_request_forces_the_exit() -> None:
    listener = CountingListener()
    listener.request_exit()
    assert listener.should_exit and not listener.force_exit
    listener.request_exit()
    assert listener.force_exit
    await asyncio.wait_for(listener.main_loop(), timeout=30)
    assert listener.ticks == 1


def test_sigterm_stops_a_real_gateway_with_every_listener_cleanly(tmp_path: pathlib.Path) -> None:
    gateway = gwharness.Gateway(workdir=tmp_path, static_config={"apps": []}, tls=None)
    try:
        gateway.wait_ready()
        gateway.popen.send_signal(signal.SIGTERM)
        # Generous: a loaded machine; the listeners wake on the request, not on their tick.
        assert gateway.popen.wait(timeout=120) == 0, gateway.output()
    finally:
        gateway.kill()
