"""Prometheus ``/metrics`` on the metrics port: the SDK's metrics plus the runner's own gauges.

The SDK's ``serve()`` exposes the global Prometheus registry on its metrics port: the
``http_requests_*`` series of the app's ``PrometheusMiddleware`` and ``fal_app_info{version}``.
The runner serves the same registry (with prometheus-client's own small threaded server, so it
needs no second ASGI stack) and adds gauges read from `RunnerState` at scrape time, which costs
nothing per request.
"""

from __future__ import annotations

import collections.abc

import prometheus_client
import prometheus_client.core
import prometheus_client.registry

from kubefal_runner import state


class RunnerStateCollector(prometheus_client.registry.Collector):
    """Exports the runner's phase, in-flight count, limit and rejections when scraped."""

    def __init__(self, runner_state: state.RunnerState) -> None:
        self._state = runner_state

    def collect(self) -> collections.abc.Iterable[prometheus_client.core.Metric]:
        yield prometheus_client.core.GaugeMetricFamily(
            "kubefal_runner_ready",
            "1 when the runner admits requests (setup done, not draining).",
            value=1.0 if self._state.ready else 0.0,
        )
        yield prometheus_client.core.GaugeMetricFamily(
            "kubefal_runner_in_flight",
            "HTTP requests and WebSocket sessions inside the app.",
            value=float(self._state.in_flight),
        )
        yield prometheus_client.core.GaugeMetricFamily(
            "kubefal_runner_max_multiplexing",
            "Requests the runner admits at once.",
            value=float(self._state.max_multiplexing),
        )
        rejected = prometheus_client.core.CounterMetricFamily(
            "kubefal_runner_rejected",
            "Requests answered 503 by the runner, by reason.",
            labels=["reason"],
        )
        for reason, count in self._state.rejected_total.items():
            rejected.add_metric([reason.value], float(count))
        yield rejected


def start_metrics_server(
    *, host: str, port: int, runner_state: state.RunnerState, app_version: str
) -> collections.abc.Callable[[], None]:
    """Serve ``/metrics`` in a background thread; return the function that stops it."""
    app_info = prometheus_client.Gauge("fal_app_info", "Fal application information", ["version"])
    app_info.labels(version=app_version).set(1)
    prometheus_client.REGISTRY.register(RunnerStateCollector(runner_state))
    server, thread = prometheus_client.start_http_server(port=port, addr=host)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
