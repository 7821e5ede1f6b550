"""Prometheus metrics of the gateway, in their own registry (nothing registered at import time).

Served as text on the admin listener's `/metrics`. Labels are bounded: app id, outcome, API.
"""

from __future__ import annotations

from typing import Any

import prometheus_client

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


class Metrics:
    """All gateway metrics; one instance per process, owned by the server's lifespan."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.queue_depth = prometheus_client.Gauge(
            "kubefal_gateway_queue_depth", "Queued requests per app", ["app"], registry=registry
        )
        self.in_flight = prometheus_client.Gauge(
            "kubefal_gateway_in_flight_requests",
            "Requests being processed by a runner, per app",
            ["app"],
            registry=registry,
        )
        self.runners = prometheus_client.Gauge(
            "kubefal_gateway_runners",
            "Runners per app and state",
            ["app", "state"],
            registry=registry,
        )
        self.desired_runners = prometheus_client.Gauge(
            "kubefal_gateway_desired_runners",
            "Desired runners per app",
            ["app"],
            registry=registry,
        )
        self.dispatch_latency = prometheus_client.Histogram(
            "kubefal_gateway_dispatch_latency_seconds",
            "Time from accepting a request to handing it to a runner",
            ["app", "api"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_latency = prometheus_client.Histogram(
            "kubefal_gateway_request_latency_seconds",
            "Time from accepting a request to its outcome",
            ["app", "api", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.retries = prometheus_client.Counter(
            "kubefal_gateway_retries_total",
            "Requests resent to a runner",
            ["app", "reason"],
            registry=registry,
        )
        self.webhook_deliveries = prometheus_client.Counter(
            "kubefal_gateway_webhook_deliveries_total",
            "Webhook delivery attempts",
            ["outcome"],
            registry=registry,
        )
        self.webhook_pending = prometheus_client.Gauge(
            "kubefal_gateway_webhook_deliveries_pending",
            "Webhook deliveries this gateway holds: waiting for a slot of their tenant, or being "
            "attempted",
            ["state"],
            registry=registry,
        )
        self.store_errors = prometheus_client.Counter(
            "kubefal_gateway_store_errors_total",
            "Queue store operations that failed (store unreachable or refusing), by the part of "
            "the gateway that needed it: api (a request answered 503), queue_worker (leasing, "
            "rescans, lease renewals), webhooks (the delivery outbox), readiness (/readyz), "
            "metrics (a scrape's refresh of the queue gauges)",
            ["component"],
            registry=registry,
        )
        for component in ("api", "queue_worker", "webhooks", "readiness", "metrics"):
            self.store_errors.labels(component)
        for state in ("waiting", "in_flight"):
            self.webhook_pending.labels(state)
        # Every outcome's series from the start: the chart's KubefalWebhookDeliveriesFailing
        # compares failed with delivered ones, which must exist before the first success.
        for outcome in ("delivered", "retry", "gave_up", "refused"):
            self.webhook_deliveries.labels(outcome)

        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._dispatch_children: dict[tuple[str, str], Any] = {}

    def observe_request(self, app_id: str, api: str, outcome: str, seconds: float) -> None:
        """Request latency by outcome; label children are cached (`labels()` costs ~5 us)."""
        key = (app_id, api, outcome)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.request_latency.labels(*key)
        child.observe(seconds)

    def observe_dispatch(self, app_id: str, api: str, seconds: float) -> None:
        key = (app_id, api)
        child = self._dispatch_children.get(key)
        if child is None:
            child = self._dispatch_children[key] = self.dispatch_latency.labels(*key)
        child.observe(seconds)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
