"""The builtin actuator's plumbing: coalescing bursts and a resilient gateway subscription.

The subscription is tested against a real aiohttp server on 127.0.0.1 streaming server-sent
events as the gateway does; nothing about HTTP is mocked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp.web
import pytest

from kubefal_operator import actuator, metrics, signals

TIMEOUT = 30.0


async def _until(predicate: object, *, timeout: float = TIMEOUT) -> None:
    """Yield to the loop until ``predicate()`` holds (or fail after ``timeout``)."""
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_a_burst_acts_on_the_first_value_at_once_then_on_the_latest() -> None:
    acted: list[int] = []

    async def act(_key: str, value: int) -> None:
        acted.append(value)

    coalescer: actuator.Coalescer[str, int] = actuator.Coalescer(act, interval=0.05)
    coalescer.offer("app", 1)
    await _until(lambda: acted == [1])
    for value in range(2, 101):
        coalescer.offer("app", value)
    await _until(lambda: acted[-1] == 100)
    assert acted == [1, 100]
    await coalescer.close()


async def test_apps_are_coalesced_independently() -> None:
    acted: list[tuple[str, int]] = []

    async def act(key: str, value: int) -> None:
        acted.append((key, value))

    coalescer: actuator.Coalescer[str, int] = actuator.Coalescer(act, interval=3600)
    coalescer.offer("a", 1)
    coalescer.offer("b", 1)
    await _until(lambda: len(acted) == 2)
    coalescer.offer("a", 2)
    await asyncio.sleep(0)
    assert sorted(acted) == [("a", 1), ("b", 1)]
    assert coalescer.pending == 1  # a's second value waits for its interval
    await coalescer.close()


async def test_a_failed_action_is_retried_with_the_newest_value() -> None:
    acted: list[int] = []
    failures = [RuntimeError("API down")]

    async def act(_key: str, value: int) -> None:
        acted.append(value)
        if failures:
            raise failures.pop()

    coalescer: actuator.Coalescer[str, int] = actuator.Coalescer(
        act, interval=0.01, retry_delay=0.05
    )
    coalescer.offer("app", 1)
    await _until(lambda: acted == [1, 1])
    failures.append(RuntimeError("API down again"))
    coalescer.offer("app", 2)
    await _until(lambda: len(acted) == 3)
    coalescer.offer("app", 3)  # arrives while the retry of 2 waits: 3 replaces it
    await _until(lambda: len(acted) == 4)
    assert acted == [1, 1, 2, 3]
    await coalescer.close()


def test_reconnect_delays_double_up_to_the_maximum() -> None:
    delays = actuator.Backoff(initial=0.5, maximum=3.0).delays()
    assert [next(delays) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


class ScalingStream:
    """A gateway admin listener: each connection gets the next batch, then is closed."""

    def __init__(self, batches: list[list[bytes]]) -> None:
        self.batches = batches
        self.connections = 0

    async def watch(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self.connections += 1
        if not self.batches:
            return aiohttp.web.json_response({"detail": "gone"}, status=503)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in self.batches.pop(0):
            await response.write(chunk)
        return response


def _event(app: str, desired: int) -> bytes:
    data = json.dumps({"app": app, "desiredRunners": desired, "queued": desired})
    return f"event: scaling\ndata: {data}\n\n".encode()


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[ScalingStream, str]]:
    stream = ScalingStream(
        [
            [b": keep-alive\n\n", _event("ns/a", 1), b"event: scaling\ndata: {oops}\n\n"],
            # one event split across writes, as TCP may deliver it
            [_event("ns/b", 2)[:17], _event("ns/b", 2)[17:]],
        ]
    )
    app = aiohttp.web.Application()
    app.router.add_get(signals.WATCH_PATH, stream.watch)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield stream, f"http://127.0.0.1:{port}/"
    await runner.cleanup()


async def test_the_actuator_reconnects_and_hands_over_every_valid_signal(
    gateway: tuple[ScalingStream, str],
) -> None:
    stream, url = gateway
    received: list[signals.ScalingSignal] = []

    async def on_signal(signal: signals.ScalingSignal) -> None:
        received.append(signal)

    follower = actuator.Actuator(
        admin_url=url,
        on_signal=on_signal,
        instruments=metrics.Metrics.create(),
        interval=0.01,
        backoff=actuator.Backoff(initial=0.01, maximum=0.05),
    )
    follower.start()
    try:
        await _until(lambda: len(received) == 2 and stream.connections >= 3)
    finally:
        await follower.stop()
    assert [(s.key, s.desired_runners) for s in received] == [(("ns", "a"), 1), (("ns", "b"), 2)]
