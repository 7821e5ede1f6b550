"""The gateway process: one event loop, one `core.Gateway`, several uvicorn listeners.

Listeners: the queue API (`--queue-port`, TLS when configured), the run API (`--run-port`, TLS),
the plain-HTTP admin API (`--admin-port`: metrics, health, scaling signals) and, when enabled,
KEDA's external scaler (`--keda-port`, gRPC) and the external metrics API for HPAs
(`--external-metrics-port`, TLS). When the queue
and run ports are equal, one listener serves both and picks the API by the Host header. uvicorn's
access log is off (it costs ~80 us per request, performance.md); signals are handled here once
for all listeners, and the core's lifespan wraps them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Generator
from typing import Any

import uvicorn

from kubefal_gateway import core, external_metrics, http_api, keda_scaler, settings, tls

LOGGER = logging.getLogger(__name__)


class _Listener(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `serve` below."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _listener(
    app: Any, *, host: str, port: int, log_level: str, ssl_options: dict[str, Any]
) -> _Listener:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http="httptools",
        ws="websockets-sansio",
        lifespan="off",
        interface="asgi3",
        proxy_headers=False,
        access_log=False,
        log_level=log_level,
        timeout_keep_alive=75,
        server_header=False,
        date_header=False,
        ws_max_size=64 * 1024 * 1024,
        **ssl_options,
    )
    return _Listener(config)


def build_listeners(gateway: core.Gateway) -> list[_Listener]:
    config = gateway.settings
    api = http_api.Api(gateway)
    ssl_options = tls.uvicorn_options(config)
    common = {"host": config.host, "log_level": config.log_level}
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
    return listeners


async def serve(config: settings.Settings) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    gateway = core.Gateway(config)
    listeners: list[_Listener] = []
    loop = asyncio.get_running_loop()

    def request_exit() -> None:
        for listener in listeners:
            if listener.should_exit:
                listener.force_exit = True
            listener.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_exit)
    async with gateway.running():
        listeners.extend(build_listeners(gateway))
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
