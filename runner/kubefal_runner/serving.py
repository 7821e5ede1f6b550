"""Serve a loaded `fal.App` under uvicorn with the runner's lifecycle; return an exit code.

Order of events:

1. uvicorn's logging is configured while ``sys.stdout``/``sys.stderr`` are still the real streams,
   then the per-request log capture replaces them, then the app module is loaded (so handlers the
   app creates at import write through the capture).
2. The app is constructed with ``_allow_init=True``, made the current app (``fal.ref``), and its
   own ASGI app (``_build_app()``) is wrapped by `asgi.RunnerASGI`.
3. The port opens (``/_kubefal/ready`` answers 503), then the SDK's lifespan runs ``setup()`` (a
   sync one in a worker thread, so probes keep being answered); on success the runner is ready,
   on failure it exits 3 with the traceback in the log.
4. SIGTERM (or SIGINT): the runner stops being ready, calls the app's ``handle_exit()`` as the SDK
   does, waits up to the drain timeout for admitted requests, stops uvicorn, runs ``teardown()``
   through the lifespan and exits 0. A second signal stops waiting.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import inspect
import logging
import logging.config
import signal
import sys
import time
import traceback
from typing import Any

import fal
import fal.app
import fal.ref
import uvicorn
import uvicorn.config

from kubefal_runner import (
    announcing,
    asgi,
    describing,
    exit_codes,
    http_limits,
    lifespan,
    loading,
    metrics,
    request_logs,
    settings,
    state,
)

logger = logging.getLogger("kubefal_runner")

TIMEOUT_KEEP_ALIVE_SECONDS = 300
"""The SDK's ``serve()`` value: gateway connections stay pooled."""
UVICORN_SHUTDOWN_GRACE_SECONDS = 5.0
"""After the drain, time uvicorn gets to close connections before it cancels what is left."""
BIND_POLL_SECONDS = 0.02


class _RunnerServer(uvicorn.Server):
    """uvicorn without its signal handling: the runner owns SIGTERM and the drain."""

    @contextlib.contextmanager
    def capture_signals(self) -> collections.abc.Generator[None, None, None]:
        yield


def uvicorn_config(
    app: Any,
    *,
    host: str,
    port: int,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    max_header_bytes: int = settings.DEFAULT_MAX_HEADER_BYTES,
    max_headers: int = settings.DEFAULT_MAX_HEADERS,
) -> uvicorn.Config:
    """The runner's uvicorn settings (the bench serves its SDK-alone baseline with them too)."""
    limited = http_limits.protocol_class(max_header_bytes=max_header_bytes, max_headers=max_headers)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="auto",
        http=limited or "h11",
        h11_max_incomplete_event_size=max_header_bytes,
        lifespan="off",
        timeout_keep_alive=TIMEOUT_KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=int(UVICORN_SHUTDOWN_GRACE_SECONDS),
        log_config=None,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )


def configure_uvicorn_logging() -> None:
    """uvicorn's usual log output, bound to the real streams before the log capture is installed."""
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)


def move_sync_setup_off_loop(app: fal.App) -> None:
    """Make a plain ``def setup()`` run in a worker thread instead of blocking the event loop.

    The SDK's lifespan calls a sync ``setup()`` directly on the loop, which would leave
    ``/_kubefal/ready`` and ``/_kubefal/health`` unanswered (and SIGTERM unhandled) for as long as a
    model loads. Awaiting it through `asyncio.to_thread` keeps the loop serving probes; the thread
    gets a copy of the context, as sync endpoints do in Starlette's threadpool.
    """
    blocking_setup = app.setup
    if inspect.iscoroutinefunction(blocking_setup):
        return

    async def setup_in_thread() -> None:
        await asyncio.to_thread(blocking_setup)

    app.setup = setup_in_thread  # type: ignore[method-assign]


def _describe_or_explain(app_class: type[fal.App]) -> dict[str, Any]:
    """The app's configuration for ``/_kubefal/info``; an app the SDK cannot describe still runs."""
    try:
        return describing.describe_app(app_class)
    except Exception as error:
        logger.exception("cannot describe %s; /_kubefal/info will carry the error", app_class)
        return {"class_name": app_class.__name__, "describe_error": f"{error!r}"}


class Runner:
    """One app, its servers and its lifecycle."""

    def __init__(
        self,
        *,
        runner_settings: settings.RunnerSettings,
        app_class: type[fal.App],
        log_capture: request_logs.RequestLogCapture,
        started_at: float,
        requirements_seconds: float,
    ) -> None:
        self._settings = runner_settings
        self._app_class = app_class
        self._started_at = started_at
        self._requirements_seconds = requirements_seconds
        self.app = app_class(_allow_init=True)
        fal.ref.set_current_app(self.app)
        move_sync_setup_off_loop(self.app)
        max_multiplexing = runner_settings.max_multiplexing or app_class.max_multiplexing or 1
        self.state = state.RunnerState(max_multiplexing=max_multiplexing)
        fal_asgi = self.app._build_app()
        self._fal_asgi = fal_asgi
        self._lifespan = lifespan.LifespanDriver(fal_asgi)
        self.asgi = asgi.RunnerASGI(
            app=fal_asgi,
            runner_state=self.state,
            log_capture=log_capture,
            app_info=_describe_or_explain(app_class),
            health_check=runner_settings.health_check or describing.health_check_of(app_class),
        )
        self._server = _RunnerServer(
            uvicorn_config(
                self.asgi,
                host=runner_settings.host,
                port=runner_settings.port,
                tls_cert=str(runner_settings.tls_cert) if runner_settings.tls_cert else None,
                tls_key=str(runner_settings.tls_key) if runner_settings.tls_key else None,
                max_header_bytes=runner_settings.max_header_bytes,
                max_headers=runner_settings.max_headers,
            )
        )
        self._signals = 0
        self._drain_requested = asyncio.Event()
        self._stop_waiting = asyncio.Event()

    def _on_signal(self, signal_number: int) -> None:
        self._signals += 1
        name = signal.Signals(signal_number).name
        if self._signals > 1:
            logger.warning("second %s: stop waiting for in-flight requests", name)
            self._stop_waiting.set()
            self._server.force_exit = True
            return
        logger.info("%s received: draining", name)
        self.state.begin_drain()
        try:
            self.app.handle_exit()  # type: ignore[no-untyped-call]
        except Exception:
            logger.exception("the app's handle_exit() raised")
        self._drain_requested.set()

    async def _wait_until_bound(self, server_task: asyncio.Task[None]) -> None:
        while not self._server.started:
            if server_task.done():
                server_task.result()
                raise RuntimeError("uvicorn stopped before it started listening")
            await asyncio.sleep(BIND_POLL_SECONDS)

    def _log_startup_budget(self, setup_seconds: float) -> None:
        total = time.monotonic() - self._started_at
        budget = float(self._app_class.startup_timeout or fal.app.DEFAULT_PLATFORM_STARTUP_TIMEOUT)
        self.asgi.startup_seconds = {
            "requirements": round(self._requirements_seconds, 3),
            "setup": round(setup_seconds, 3),
            "total": round(total, 3),
            "budget": budget,
        }
        logger.info(
            "startup finished in %.2f s (requirements %.2f s, setup %.2f s) of a %.0f s budget",
            total,
            self._requirements_seconds,
            setup_seconds,
            budget,
        )
        if total > budget:
            logger.warning(
                "startup took %.1f s, beyond the app's startup_timeout of %.0f s", total, budget
            )

    async def _drain_and_stop(self, server_task: asyncio.Task[None]) -> None:
        timeout = self._settings.drain_timeout_seconds
        if self.state.busy:
            logger.info("waiting up to %.1f s for %d in-flight requests", timeout, self.state.busy)
        idle = asyncio.create_task(self.state.wait_idle(timeout))
        interrupted = asyncio.create_task(self._stop_waiting.wait())
        await asyncio.wait({idle, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        interrupted.cancel()
        if not idle.done() or not idle.result():
            idle.cancel()
            logger.warning("drain ended with %d requests still in flight", self.state.busy)
        self._server.should_exit = True
        await server_task

    async def serve(self) -> int:
        """Run until drained; return the process exit code."""
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, self._on_signal, signal_number)
        stop_metrics: collections.abc.Callable[[], None] | None = None
        if self._settings.metrics_port:
            stop_metrics = metrics.start_metrics_server(
                host=self._settings.host,
                port=self._settings.metrics_port,
                runner_state=self.state,
                app_version=self._app_class.version,
            )
        server_task = asyncio.create_task(self._server.serve(), name="uvicorn")
        try:
            await self._wait_until_bound(server_task)
            setup_started = time.monotonic()
            try:
                await self._lifespan.startup()
            except lifespan.LifespanFailed as failure:
                self.state.mark_failed()
                logger.error(
                    "setup() failed, exiting with code %d:\n%s", exit_codes.SETUP_FAILED, failure
                )
                self._server.should_exit = True
                await server_task
                return exit_codes.SETUP_FAILED
            await warm_up(self._fal_asgi)
            self.state.mark_ready()
            self._log_startup_budget(time.monotonic() - setup_started)
            announcement = asyncio.create_task(asyncio.to_thread(announcing.announce))
            await self._drain_requested.wait()
            await self._drain_and_stop(server_task)
            announcement.cancel()
            self.state.mark_stopped()
            try:
                await self._lifespan.shutdown()
            except lifespan.LifespanFailed as failure:
                logger.error("teardown() failed:\n%s", failure)
                return exit_codes.TEARDOWN_FAILED
            logger.info("teardown() done, exiting")
            return exit_codes.OK
        finally:
            if stop_metrics is not None:
                stop_metrics()


WARM_UP_METHOD = "KUBEFAL-WARM-UP"
"""The method of the warm-up request: no route has it, so no user code runs."""
WARM_UP_SECONDS = 2.0


async def warm_up(app: Any) -> None:
    """Send the app one request that no route takes (an unknown method), before the runner is
    ready: the first request through the SDK's app otherwise pays for its cold paths (about
    60 ms on a loaded 2-core machine, 5-30 ms after this), and that first request is the one a
    cold start waits on. The answer (404 or 405) is dropped; a failure is only logged."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": WARM_UP_METHOD,
        "scheme": "http",
        "path": "/_kubefal/warm-up",
        "raw_path": b"/_kubefal/warm-up",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "state": {},
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # nothing more: as a client that stays connected
        sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: collections.abc.MutableMapping[str, Any]) -> None:
        return None

    try:
        async with asyncio.timeout(WARM_UP_SECONDS):
            await app(scope, receive, send)
    except Exception as error:  # a warm-up never fails the start
        logger.debug("warm-up request failed: %s", error)


def serve_app(
    runner_settings: settings.RunnerSettings, *, started_at: float, requirements_seconds: float
) -> int:
    """Load and serve the app named in the settings; return the process exit code."""
    configure_uvicorn_logging()
    log_capture = request_logs.RequestLogCapture(request_logs.RequestLogStore(sink=sys.stdout))
    log_capture.install()
    try:
        app_class = loading.load_app_class(runner_settings.app_ref)
    except loading.AppLoadError as error:
        logger.error("cannot load %s: %s", runner_settings.app_ref, error)
        return exit_codes.APP_LOAD_FAILED
    except Exception:
        logger.error("loading %s raised:\n%s", runner_settings.app_ref, traceback.format_exc())
        return exit_codes.APP_LOAD_FAILED
    loop_factory = uvicorn_config(None, host="", port=0).get_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as event_loop:
        return event_loop.run(
            _construct_and_serve(
                runner_settings=runner_settings,
                app_class=app_class,
                log_capture=log_capture,
                started_at=started_at,
                requirements_seconds=requirements_seconds,
            )
        )


async def _construct_and_serve(
    *,
    runner_settings: settings.RunnerSettings,
    app_class: type[fal.App],
    log_capture: request_logs.RequestLogCapture,
    started_at: float,
    requirements_seconds: float,
) -> int:
    """Build the `Runner` inside the loop (its asyncio primitives belong to it), then serve."""
    try:
        runner = Runner(
            runner_settings=runner_settings,
            app_class=app_class,
            log_capture=log_capture,
            started_at=started_at,
            requirements_seconds=requirements_seconds,
        )
    except Exception:
        logger.error(
            "%s cannot be served by the SDK:\n%s", runner_settings.app_ref, traceback.format_exc()
        )
        return exit_codes.APP_LOAD_FAILED
    return await runner.serve()
