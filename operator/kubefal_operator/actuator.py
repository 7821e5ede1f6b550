"""The builtin actuator: the operator follows the gateway's desired runner counts.

The gateway pushes every change of an app's scaling signal on its admin listener
(``GET /_kubefal/scaling/watch``, server-sent events) and sends every app's signal again on
each new connection. :class:`Actuator` holds that subscription open for the operator's
lifetime: it reconnects with exponential backoff after any failure (gateway restart, network
blip, a silent connection caught by the read timeout; the gateway sends a keep-alive every
15 s), and after a reconnect the full resend converges every app.

Signals go through a :class:`Coalescer`: at most one action per app per interval (default
150 ms), always on the app's latest signal, the first one at once. A burst of requests on an
idle app thus scales 0 → 1 immediately, and the next write carries whatever the gateway
wanted last. The action itself (``actuation.actuate``) writes replicas only when they
change, so unchanged signals cost no API write.

aiohttp, not httpx: kopf and ``kube`` already use it, so it costs no extra memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from typing import Final, Generic, TypeVar

import aiohttp

from kubefal_operator import metrics, signals

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

READ_TIMEOUT_SECONDS: Final = 45.0
"""A stream silent this long is dead: the gateway sends a keep-alive every 15 s."""
CONNECT_TIMEOUT_SECONDS: Final = 10.0
RETRY_SECONDS: Final = 1.0
"""Delay before a failed action is tried again (unless a newer signal came meanwhile)."""


class GatewayStreamError(Exception):
    """The gateway answered the subscription with something other than an event stream."""


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Delays between reconnects: ``initial``, doubling up to ``maximum``."""

    initial: float = 0.2
    maximum: float = 10.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.maximum)


class Coalescer(Generic[K, V]):
    """Runs ``action(key, value)`` at most once per ``interval`` per key, on the latest value.

    ``offer`` never blocks. A key with nothing pending has no task; its first offer after a
    quiet ``interval`` acts at once. An action that raises is tried again after
    ``retry_delay`` with the same value, unless a newer value arrived meanwhile.
    """

    def __init__(
        self,
        action: Callable[[K, V], Awaitable[None]],
        *,
        interval: float,
        retry_delay: float = RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._action = action
        self._interval = interval
        self._retry_delay = retry_delay
        self._clock = clock
        self._latest: dict[K, V] = {}
        self._not_before: dict[K, float] = {}
        self._tasks: dict[K, asyncio.Task[None]] = {}

    @property
    def pending(self) -> int:
        """Keys with a value not acted on yet."""
        return len(self._latest)

    def offer(self, key: K, value: V) -> None:
        self._latest[key] = value
        if key not in self._tasks:
            self._tasks[key] = asyncio.get_running_loop().create_task(self._drain(key))

    async def _drain(self, key: K) -> None:
        try:
            while key in self._latest:
                delay = self._not_before.get(key, -math.inf) - self._clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                value = self._latest.pop(key)
                self._not_before[key] = self._clock() + self._interval
                try:
                    await self._action(key, value)
                except Exception:
                    logger.exception("acting on %s failed; retrying", key)
                    self._latest.setdefault(key, value)
                    self._not_before[key] = self._clock() + self._retry_delay
        finally:
            self._tasks.pop(key, None)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._latest.clear()


async def event_stream(
    session: aiohttp.ClientSession,
    url: str,
    *,
    on_open: Callable[[], None] | None = None,
    token: str | None = None,
) -> AsyncIterator[signals.ServerSentEvent]:
    """The server-sent events of one connection to ``url``, until it ends; ``on_open`` is
    called once the server accepted the subscription. ``token``: the gateway's admin token."""
    headers = {"Accept": "text/event-stream", **signals.admin_headers(token)}
    async with session.get(url, headers=headers) as response:
        content_type = response.headers.get("Content-Type", "")
        if response.status != 200 or not content_type.startswith("text/event-stream"):
            raise GatewayStreamError(
                f"GET {url} answered {response.status} {content_type or 'without a type'}"
            )
        if on_open is not None:
            on_open()
        parser = signals.EventStreamParser()
        buffer = b""
        # Lines are split by hand: a signal with many runnerDetails may exceed aiohttp's
        # readline limit.
        async for chunk in response.content.iter_any():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                event = parser.feed(line.rstrip(b"\r").decode("utf-8", errors="replace"))
                if event is not None:
                    yield event


class Actuator:
    """Subscribes to the gateway's scaling stream and hands each app's latest signal to
    ``on_signal`` (coalesced), for as long as it runs."""

    def __init__(
        self,
        *,
        admin_url: str,
        on_signal: Callable[[signals.ScalingSignal], Awaitable[None]],
        instruments: metrics.Metrics,
        interval: float,
        backoff: Backoff | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.url = admin_url.rstrip("/") + signals.WATCH_PATH
        self._admin_token = admin_token
        self._on_signal = on_signal
        self._instruments = instruments
        self._backoff = backoff or Backoff()
        self._coalescer: Coalescer[tuple[str, str], signals.ScalingSignal] = Coalescer(
            self._act, interval=interval
        )
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def _act(self, _key: tuple[str, str], signal: signals.ScalingSignal) -> None:
        await self._on_signal(signal)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="kubefal-actuator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._coalescer.close()

    async def run(self) -> None:
        """Subscribe, and subscribe again after every failure, until cancelled."""
        timeout = aiohttp.ClientTimeout(
            total=None, connect=CONNECT_TIMEOUT_SECONDS, sock_read=READ_TIMEOUT_SECONDS
        )
        async with aiohttp.ClientSession(timeout=timeout) as session:
            delays = self._backoff.delays()

            def opened() -> None:
                nonlocal delays
                logger.info("subscribed to the gateway's scaling stream %s", self.url)
                self.connected.set()
                self._instruments.gateway_connected.set(1)
                delays = self._backoff.delays()

            while True:
                try:
                    async for event in event_stream(
                        session, self.url, on_open=opened, token=self._admin_token
                    ):
                        self._receive(event)
                    problem = "the stream ended"
                except (aiohttp.ClientError, TimeoutError, GatewayStreamError) as error:
                    problem = f"{type(error).__name__}: {error}"
                self.connected.clear()
                self._instruments.gateway_connected.set(0)
                delay = next(delays)
                logger.warning(
                    "gateway scaling stream %s: %s; reconnecting in %.1f s",
                    self.url,
                    problem,
                    delay,
                )
                await asyncio.sleep(delay)

    def _receive(self, event: signals.ServerSentEvent) -> None:
        if event.event != signals.SCALING_EVENT:
            return
        try:
            signal = signals.parse_signal(event.data)
        except signals.SignalError as error:
            logger.warning("ignoring a scaling event from the gateway: %s", error)
            return
        self._instruments.gateway_signals.inc()
        self._coalescer.offer(signal.key, signal)
