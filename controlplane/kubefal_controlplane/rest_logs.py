"""``fal runners logs`` on the control plane's REST side: ``POST|GET /logs/history`` (a page of
a runner's log, newest first) and ``POST|GET /logs/stream`` (server-sent events until the
runner's container ends), read from the runner pods' logs (or ``kubefal run``'s runner.log)
with the key's namespace scoping (:mod:`kubefal_controlplane.runner_logs` parses them).

Why a module of its own: the log routes are the largest part of the REST side, with their own
limits (concurrent streams, their duration, bytes and lines per page); the listener, its
routing and the ``/files`` relay are :mod:`kubefal_controlplane.rest`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import json
import logging
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import h11
from kubernetes.client.exceptions import ApiException

from kubefal_controlplane import auth, http1, rpc, runner_logs
from kubefal_controlplane import settings as settings_module

logger = logging.getLogger(__name__)

T = TypeVar("T")

SSE_HEARTBEAT_SECONDS: Final = 15.0
STREAM_QUEUE_LINES: Final = 1000


class RunnerLogs(Protocol):
    """Where runner logs come from (:class:`kubefal_controlplane.cluster.Cluster`)."""

    def read_runner_log(
        self,
        namespace: str,
        name: str,
        *,
        since_seconds: int | None,
        tail_lines: int,
        limit_bytes: int,
    ) -> bytes: ...

    def follow_runner_log(self, namespace: str, name: str, *, since_seconds: int | None) -> Any: ...


class LogRoutes:
    """The log routes, mixed into :class:`kubefal_controlplane.rest.RestApi`."""

    settings: settings_module.Settings
    logs: RunnerLogs | None
    _streams: concurrent.futures.ThreadPoolExecutor
    _open_streams: int

    if TYPE_CHECKING:

        async def _call(self, function: Callable[..., T], *args: Any) -> T: ...

        async def _runner(self, caller: auth.Caller, runner_id: str) -> dict[str, Any]: ...

    def _window(
        self, params: dict[str, str]
    ) -> tuple[str, datetime.datetime | None, datetime.datetime | None, str | None]:
        try:
            job_id = params.get("job_id")
            if not job_id:
                raise runner_logs.BadQuery("job_id: the runner id is required")
            since = params.get("since")
            until = params.get("until")
            return (
                job_id,
                None if since is None else runner_logs.parse_time(since, field="since"),
                None if until is None else runner_logs.parse_time(until, field="until"),
                runner_logs.parse_search(params.get("search")),
            )
        except runner_logs.BadQuery as error:
            raise http1.HttpError(400, str(error)) from None

    @staticmethod
    def _since_seconds(since: datetime.datetime | None) -> int | None:
        if since is None:
            return None
        seconds = (datetime.datetime.now(tz=datetime.UTC) - since).total_seconds()
        return max(1, math.ceil(seconds) + 1)

    async def _history(
        self, connection: http1.Connection, caller: auth.Caller, params: dict[str, str]
    ) -> None:
        job_id, since, until, search = self._window(params)
        try:
            page_size = runner_logs.parse_page_size(params.get("page_size"), 1000)
        except runner_logs.BadQuery as error:
            raise http1.HttpError(400, str(error)) from None
        pod = await self._runner(caller, job_id)
        meta = pod["metadata"]
        source = self._log_source()
        try:
            raw = await self._call(
                lambda: source.read_runner_log(
                    str(meta["namespace"]),
                    str(meta["name"]),
                    since_seconds=self._since_seconds(since),
                    tail_lines=self.settings.log_max_lines,
                    limit_bytes=self.settings.log_max_bytes,
                )
            )
        except ApiException as error:
            raise self._log_error(error, job_id) from None
        lines = runner_logs.selected(
            runner_logs.parse_lines(raw.decode("utf-8", "replace")),
            since=since,
            until=until,
            search=search,
        )
        await connection.send_json(200, runner_logs.page(lines, page_size))

    def _log_source(self) -> RunnerLogs:
        if self.logs is None:
            raise http1.HttpError(501, "Runner logs are not served by this control plane's backend")
        return self.logs

    @staticmethod
    def _log_error(error: ApiException, job_id: str) -> http1.HttpError:
        if error.status in (400, 404):
            # 400: the container has not started yet (or is gone from its node).
            return http1.HttpError(404, f"No log of runner {job_id} is available (yet)")
        return http1.from_failure(rpc.api_failure(error, f"the log of runner {job_id}"))

    async def _stream(
        self, connection: http1.Connection, caller: auth.Caller, params: dict[str, str]
    ) -> None:
        job_id, since, until, search = self._window(params)
        if self._open_streams >= self.settings.log_streams:
            raise http1.HttpError(429, f"Too many log streams open ({self.settings.log_streams})")
        # Counted before the first await, so that requests arriving together cannot all pass.
        self._open_streams += 1
        try:
            pod = await self._runner(caller, job_id)
            meta = pod["metadata"]
            await self._follow(
                connection,
                namespace=str(meta["namespace"]),
                name=str(meta["name"]),
                job_id=job_id,
                since=since,
                until=until,
                search=search,
            )
        finally:
            self._open_streams -= 1

    async def _follow(
        self,
        connection: http1.Connection,
        *,
        namespace: str,
        name: str,
        job_id: str,
        since: datetime.datetime | None,
        until: datetime.datetime | None,
        search: str | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        source = self._log_source()
        try:
            response = await self._call(
                lambda: source.follow_runner_log(
                    namespace, name, since_seconds=self._since_seconds(since)
                )
            )
        except ApiException as error:
            raise self._log_error(error, job_id) from None
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(STREAM_QUEUE_LINES)
        stop = threading.Event()

        def end() -> None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

        def pump() -> None:
            """Lines from the Kubernetes stream into the queue (waits while it is full)."""
            pending = b""
            try:
                for chunk in response.stream(http1.READ_CHUNK, decode_content=True):
                    if stop.is_set():
                        return
                    complete, pending = runner_logs.split_lines(pending + chunk)
                    for line in complete:
                        asyncio.run_coroutine_threadsafe(queue.put(line), loop).result()
            except Exception as error:
                if not stop.is_set():
                    logger.info("log stream of %s/%s ended: %s", namespace, name, error)
            finally:
                # Closed here, in the thread that reads it: close() waits for a read in
                # progress, which on a quiet runner's log is a wait for its next line.
                with contextlib.suppress(Exception):
                    response.close()
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(end)

        await connection.send(
            h11.Response(
                status_code=200,
                headers=[
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-store"),
                ],
            )
        )
        reader = loop.run_in_executor(self._streams, pump)
        ends = loop.time() + self.settings.log_stream_seconds
        try:
            while True:
                wait = min(SSE_HEARTBEAT_SECONDS, ends - loop.time())
                if wait <= 0:
                    break
                try:
                    raw = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if reader.done() and queue.empty():
                        break
                    await connection.send(h11.Data(data=b": keep-alive\n\n"))
                    continue
                if raw is None:
                    break
                line = runner_logs.parse_line(raw.decode("utf-8", "replace"))
                if line is None or (since is not None and line.at < since):
                    continue
                if until is not None and line.at >= until:
                    break
                if search is not None and search not in line.message:
                    continue
                event = b"data: " + json.dumps(line.to_json()).encode() + b"\n\n"
                await connection.send(h11.Data(data=event))
            await connection.send(h11.EndOfMessage())
        finally:
            stop.set()
            # Ends the pump's read at once (the socket is shut down), without waiting for it:
            # close() on this loop blocked every connection of the front door until the
            # runner wrote its next line.
            with contextlib.suppress(Exception):
                response.shutdown()
            # The pump may wait on a full queue: drain until it has finished.
            while not reader.done():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                await asyncio.sleep(0.01)
