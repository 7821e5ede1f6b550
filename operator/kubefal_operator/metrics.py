"""Prometheus metrics of the operator: reconciles, errors and how long they take, and each
FalApp's computed status (conditions and runner counts) for the chart's alerts.

Metrics live in a :class:`prometheus_client.CollectorRegistry` created at startup and
served from there, not registered into the global registry at import time, so importing the
package has no side effects and tests can build as many independent instances as they like.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeAlias
from wsgiref.simple_server import WSGIServer

import prometheus_client
import prometheus_client.core
import prometheus_client.registry

MetricsServer: TypeAlias = WSGIServer
"""The HTTP server behind ``/metrics`` (stop it with ``shutdown()``)."""

RESULT_CHANGED = "changed"
RESULT_UNCHANGED = "unchanged"
RESULT_ERROR = "error"
RUNNER_STATES = ("pending", "setup", "running", "idle", "draining")
"""The keys of a FalApp status's ``runners`` counts."""

StatusSource: TypeAlias = Callable[[], Iterable[tuple[str, str, Mapping[str, Any]]]]
"""(namespace, name, status document) of every FalApp the operator currently serves."""


class StatusCollector(prometheus_client.registry.Collector):
    """Exports the status each FalApp was last computed to have, read at scrape time.

    ``kubefal_operator_falapp_condition`` is 1 for each condition's current (status, reason),
    like kube-state-metrics' condition series, so an alert can say "Scheduled is False with
    WaitingForGPUCapacity for 10 minutes"; ``kubefal_operator_falapp_runners`` counts runners
    by state. Labels are bounded by the FalApps served (a deleted app's series go with it).
    """

    def __init__(self, source: StatusSource) -> None:
        self._source = source

    def collect(self) -> Iterator[prometheus_client.core.Metric]:
        condition = prometheus_client.core.GaugeMetricFamily(
            "kubefal_operator_falapp_condition",
            "1 for the current status and reason of each condition of a FalApp.",
            labels=["namespace", "falapp", "type", "status", "reason"],
        )
        runners = prometheus_client.core.GaugeMetricFamily(
            "kubefal_operator_falapp_runners",
            "Runners of a FalApp by state (pending, setup, running, idle, draining).",
            labels=["namespace", "falapp", "state"],
        )
        for namespace, name, document in list(self._source()):
            for item in document.get("conditions") or ():
                labels = [
                    namespace,
                    name,
                    str(item.get("type", "")),
                    str(item.get("status", "")),
                    str(item.get("reason", "")),
                ]
                condition.add_metric(labels, 1.0)
            counts = document.get("runners") or {}
            for state in RUNNER_STATES:
                runners.add_metric([namespace, name, state], float(counts.get(state, 0)))
        yield condition
        yield runners


@dataclasses.dataclass
class Metrics:
    """The operator's instruments, all in one registry."""

    registry: prometheus_client.CollectorRegistry
    reconciles: prometheus_client.Counter
    errors: prometheus_client.Counter
    durations: prometheus_client.Histogram
    status_writes: prometheus_client.Counter
    replica_changes: prometheus_client.Counter
    deletion_cost_writes: prometheus_client.Counter
    gateway_signals: prometheus_client.Counter
    gateway_connected: prometheus_client.Gauge

    @classmethod
    def create(cls) -> Metrics:
        registry = prometheus_client.CollectorRegistry(auto_describe=True)
        return cls(
            registry=registry,
            reconciles=prometheus_client.Counter(
                "kubefal_operator_reconciles",
                "Reconciles by the kind of object whose event triggered them and their result "
                "(changed: something was applied or deleted; unchanged; error).",
                labelnames=("kind", "result"),
                registry=registry,
            ),
            errors=prometheus_client.Counter(
                "kubefal_operator_reconcile_errors",
                "Failed reconciles by triggering kind and error class.",
                labelnames=("kind", "error"),
                registry=registry,
            ),
            durations=prometheus_client.Histogram(
                "kubefal_operator_reconcile_duration_seconds",
                "Time spent in one reconcile, by triggering kind.",
                labelnames=("kind",),
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                registry=registry,
            ),
            status_writes=prometheus_client.Counter(
                "kubefal_operator_status_writes",
                "FalApp status updates written (only when the computed status changed).",
                registry=registry,
            ),
            replica_changes=prometheus_client.Counter(
                "kubefal_operator_replica_changes",
                "Replica changes made by the builtin actuator (ScaledUp or ScaledDown).",
                labelnames=("direction",),
                registry=registry,
            ),
            deletion_cost_writes=prometheus_client.Counter(
                "kubefal_operator_deletion_cost_writes",
                "Runner pods annotated with pod-deletion-cost before a scale-down.",
                registry=registry,
            ),
            gateway_signals=prometheus_client.Counter(
                "kubefal_operator_gateway_signals",
                "Scaling signals received from the gateway's stream.",
                registry=registry,
            ),
            gateway_connected=prometheus_client.Gauge(
                "kubefal_operator_gateway_connected",
                "1 while the operator is subscribed to the gateway's scaling stream.",
                registry=registry,
            ),
        )

    @contextlib.contextmanager
    def reconciling(self, kind: str) -> Iterator[list[str]]:
        """Time a reconcile and count it; the body appends its result (default: unchanged)."""
        result: list[str] = []
        started = time.perf_counter()
        try:
            yield result
        except Exception as error:
            self.reconciles.labels(kind=kind, result=RESULT_ERROR).inc()
            self.errors.labels(kind=kind, error=type(error).__name__).inc()
            raise
        else:
            outcome = result[-1] if result else RESULT_UNCHANGED
            self.reconciles.labels(kind=kind, result=outcome).inc()
        finally:
            self.durations.labels(kind=kind).observe(time.perf_counter() - started)

    def serve(self, *, host: str, port: int) -> MetricsServer:
        """Serve ``/metrics`` in a daemon thread; call ``shutdown()`` on the result when done."""
        server, _thread = prometheus_client.start_http_server(
            port=port, addr=host, registry=self.registry
        )
        return server
