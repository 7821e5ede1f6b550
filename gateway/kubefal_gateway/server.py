"""The gateway process: one event loop, one `core.Gateway`, several uvicorn listeners.

Listeners: the queue API (`--queue-port`, TLS when configured), the run API (`--run-port`,
TLS), the plain-HTTP admin API (`--admin-port`: metrics, health, scaling signals) and, when
enabled, KEDA's external scaler (`--keda-port`, gRPC) and the external metrics API for HPAs
(`--external-metrics-port`, TLS). When the queue and run ports are equal, one listener serves
both and picks the API by the Host header. Every HTTP listener uses `limits.GuardedProtocol`
(header size and count caps, header-read and idle timeouts, connection caps) and a bounded TLS
handshake (`--tls-handshake-timeout`). uvicorn's access log is off (it costs ~80 us per
request); signals are handled here once for all listeners, and the core's lifespan wraps them
all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
from collections.abc import AsyncIterator, Generator
from typing import Any

import uvicorn

from kubefal_gateway import core, external_metrics, keda_scaler, limits, settings, tls
from kubefal_gateway.http_api import routing
from kubefal_gateway.storage import runtime as storage_runtime

LOGGER = logging.getLogger(__name__)

# How often an idle listener wakes up to look at its exit flag; an exit request also wakes it at
# once (`_Listener.request_exit`). uvicorn's own loop wakes every 0.1 s.
LISTENER_TICK_SECONDS = 1.0


class _Listener(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `serve` below, guards its connections
    (limits.py) and bounds the TLS handshake (`--tls-handshake-timeout`)."""

    def __init__(self, config: uvicorn.Config, *, handshake_timeout: float) -> None:
        super().__init__(config)
        self.handshake_timeout = handshake_timeout
        self._exit_requested = asyncio.Event()

    def request_exit(self) -> None:
        """Stop accepting and drain (a second call: stop now), waking `main_loop` at once."""
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True
        self._exit_requested.set()

    async def main_loop(self) -> None:
        """uvicorn's loop, waking once a second instead of ten times: with no date header, no
        notify callback and no request limit its tick only checks the exit flag, and an idle
        gateway's listeners were 30 of its wake-ups a second (docs/design-decisions.md)."""
        counter = 0
        while not await self.on_tick(counter):
            counter += 10  # uvicorn refreshes its default headers on multiples of 10
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LISTENER_TICK_SECONDS):
                    await self._exit_requested.wait()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up for a host and port, plus `ssl_handshake_timeout`, which uvicorn
        does not pass (the event loop's default is 60 s)."""
        await self.lifespan.startup()
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        loop = asyncio.get_running_loop()
        extra: dict[str, Any] = {}
        if config.ssl is not None:
            extra["ssl_handshake_timeout"] = self.handshake_timeout
        try:
            server = await loop.create_server(
                create_protocol,
                host=config.host,
                port=config.port,
                ssl=config.ssl,
                backlog=config.backlog,
                **extra,
            )
        except OSError as error:
            LOGGER.error("cannot listen on %s:%s: %s", config.host, config.port, error)
            await self.lifespan.shutdown()
            raise SystemExit(3) from error
        self.servers = [server]
        self.started = True


def _listener(
    app: Any,
    *,
    host: str,
    port: int,
    log_level: str,
    ssl_options: dict[str, Any],
    gateway_settings: settings.Settings,
    sendfile: bool = False,
) -> _Listener:
    limiter = limits.ConnectionLimiter(
        limits.ListenerLimits(
            max_header_bytes=gateway_settings.max_header_bytes,
            max_headers=gateway_settings.max_headers,
            header_timeout=gateway_settings.header_timeout,
            max_connections=gateway_settings.max_connections,
            max_connections_per_ip=gateway_settings.max_connections_per_ip,
        )
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http=functools.partial(  # type: ignore[arg-type]
            limits.GuardedProtocol, limiter=limiter, sendfile=sendfile
        ),
        ws="websockets-sansio",
        lifespan="off",
        interface="asgi3",
        proxy_headers=False,
        access_log=False,
        log_level=log_level,
        timeout_keep_alive=gateway_settings.idle_timeout,  # type: ignore[arg-type]
        server_header=False,
        date_header=False,
        ws_max_size=64 * 1024 * 1024,
        **ssl_options,
    )
    return _Listener(config, handshake_timeout=gateway_settings.tls_handshake_timeout)


def build_listeners(gateway: core.Gateway, rest_app: Any = None) -> list[_Listener]:
    config = gateway.settings
    api = routing.Api(gateway)
    ssl_options = tls.uvicorn_options(config)
    common: dict[str, Any] = {
        "host": config.host,
        "log_level": config.log_level,
        "gateway_settings": config,
    }
    listeners = []
    if config.queue_port == config.run_port or config.queue_port == 0:
        listeners.append(
            _listener(api.combined_app, port=config.run_port, ssl_options=ssl_options, **common)
        )
    else:
        listeners.append(
            _listener(api.queue_app, port=config.queue_port, ssl_options=ssl_options, **common)
        )
        listeners.append(
            _listener(api.run_app, port=config.run_port, ssl_options=ssl_options, **common)
        )
    if config.admin_port:
        listeners.append(_listener(api.admin_app, port=config.admin_port, ssl_options={}, **common))
    if config.external_metrics_port:
        listeners.append(
            _listener(
                external_metrics.ExternalMetricsApp(gateway.signals),
                port=config.external_metrics_port,
                ssl_options=ssl_options,
                **common,
            )
        )
    if rest_app is not None:
        listeners.append(
            # Zero-copy file downloads when this listener is plain TCP (zerocopy.py).
            _listener(
                rest_app, port=config.rest_port, ssl_options=ssl_options, sendfile=True, **common
            )
        )
    return listeners


async def serve(config: settings.Settings) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    gateway = core.Gateway(config)
    listeners: list[_Listener] = []
    loop = asyncio.get_running_loop()

    def request_exit() -> None:
        for listener in listeners:
            listener.request_exit()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_exit)
    reload_asked = asyncio.Event()
    if config.static_config is not None:
        # A SIGHUP while the gateway starts (its default action ends the process) is kept and
        # served once the gateway runs, since the file may have changed after it was read.
        loop.add_signal_handler(signal.SIGHUP, reload_asked.set)
    async with gateway.running(), storage_runtime.serving(gateway) as rest_app:
        if config.static_config is not None:
            loop.add_signal_handler(signal.SIGHUP, gateway.reload_static)
            if reload_asked.is_set():
                gateway.reload_static()
        listeners.extend(build_listeners(gateway, rest_app))
        async with _keda_scaler(gateway):
            tasks = [loop.create_task(listener.serve()) for listener in listeners]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            request_exit()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(error, SystemExit):
                LOGGER.error("a listener failed: %s", error)


@contextlib.asynccontextmanager
async def _keda_scaler(gateway: core.Gateway) -> AsyncIterator[None]:
    """KEDA's external scaler on `--keda-port`, while the listeners run."""
    config = gateway.settings
    if not config.keda_port:
        yield
        return
    server, scaler, _ = await keda_scaler.serve(
        gateway.signals, host=config.host, port=config.keda_port
    )
    try:
        yield
    finally:
        await scaler.stop()
        await server.stop(grace=2.0)


def main(argv: list[str] | None = None) -> None:
    config = settings.load(argv)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if config.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve(config))
    else:
        asyncio.run(serve(config))
