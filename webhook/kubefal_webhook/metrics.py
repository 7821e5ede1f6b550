"""Prometheus metrics of the admission webhook: reviews, their latency, and API server failures.

A ``failurePolicy: Fail`` webhook that cannot decide blocks every FalApp write, so platform
teams need to see how often it denies, how often it cannot answer and why (the API server it
reads ConfigMaps, Secrets and nodes from). Metrics live in their own
:class:`prometheus_client.CollectorRegistry` created at start-up (nothing is registered at
import time) and are served as text on a plain HTTP port of their own, like the operator's:
the TLS listener is the API server's, and Prometheus scrapes without the webhook's CA.

Every label value comes from a fixed set, never from the caller: a review of anything but a
FalApp is counted as kind ``other``, and a body that is not an AdmissionReview as kind and
operation ``unknown``.
"""

from __future__ import annotations

import time
from typing import Final, TypeAlias
from wsgiref.simple_server import WSGIServer

import prometheus_client

MetricsServer: TypeAlias = WSGIServer
"""The HTTP server behind ``/metrics`` (stop it with ``shutdown()``)."""

RESULT_ALLOWED: Final = "allowed"
RESULT_DENIED: Final = "denied"
RESULT_ERROR: Final = "error"
"""The webhook could not decide: the request was invalid, or the cluster's state unreadable."""
RESULTS: Final = (RESULT_ALLOWED, RESULT_DENIED, RESULT_ERROR)

KIND_FALAPP: Final = "FalApp"
KIND_OTHER: Final = "other"
UNKNOWN: Final = "unknown"
"""Kind and operation of a request that is not a readable AdmissionReview."""
OPERATIONS: Final = ("CREATE", "UPDATE", "DELETE", "CONNECT")

INVALID_MALFORMED: Final = "malformed"
INVALID_TOO_LARGE: Final = "too_large"
INVALID_REASONS: Final = (INVALID_MALFORMED, INVALID_TOO_LARGE)

API_RESOURCES: Final = ("configmap", "secret", "node")
API_TRANSPORT: Final = "transport"
"""The ``code`` of an API server call that got no HTTP answer (connection, timeout, TLS)."""

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Seconds; the API server's default webhook timeout is 10 s."""


def api_error_code(status: object) -> str:
    """The ``code`` label of a failed API server call: its HTTP status, bounded to 100-599."""
    if isinstance(status, int) and 100 <= status <= 599:
        return str(status)
    return "other"


class Metrics:
    """The webhook's instruments, all in one registry; one instance per process."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.reviews = prometheus_client.Counter(
            "kubefal_webhook_admission_reviews",
            "Admission requests answered, by the reviewed object's kind (FalApp, other, unknown), "
            "operation and result (allowed, denied, error: invalid request or cluster state "
            "unreadable).",
            labelnames=("kind", "operation", "result"),
            registry=registry,
        )
        self.duration = prometheus_client.Histogram(
            "kubefal_webhook_admission_duration_seconds",
            "Time from reading an admission request to its answer, by kind and result.",
            labelnames=("kind", "result"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.invalid = prometheus_client.Counter(
            "kubefal_webhook_invalid_requests",
            "Requests refused with a 4xx before any review, by reason (malformed: not an "
            "AdmissionReview v1; too_large: over --max-body-bytes).",
            labelnames=("reason",),
            registry=registry,
        )
        self.api_errors = prometheus_client.Counter(
            "kubefal_webhook_api_errors",
            "Failed calls to the Kubernetes API server, by resource (configmap, secret, node) "
            "and code (its HTTP status, or transport when there was no answer). A 404 of a "
            "referenced object is an answer, not a failure.",
            labelnames=("resource", "code"),
            registry=registry,
        )
        # The series the alerts and the dashboard read exist (at 0) before the first review.
        for result in RESULTS:
            for operation in ("CREATE", "UPDATE"):
                self.reviews.labels(kind=KIND_FALAPP, operation=operation, result=result)
        self.reviews.labels(kind=UNKNOWN, operation=UNKNOWN, result=RESULT_ERROR)
        for reason in INVALID_REASONS:
            self.invalid.labels(reason=reason)

    def reviewed(self, *, kind: str, operation: str, result: str, started: float) -> None:
        """Count one answered request and observe its latency since ``started``
        (a :func:`time.perf_counter` value)."""
        self.reviews.labels(kind=kind, operation=operation, result=result).inc()
        self.duration.labels(kind=kind, result=result).observe(time.perf_counter() - started)

    def invalid_request(self, reason: str, *, started: float) -> None:
        """Count a request refused before review (a 4xx): it is also an ``error`` review."""
        self.invalid.labels(reason=reason).inc()
        self.reviewed(kind=UNKNOWN, operation=UNKNOWN, result=RESULT_ERROR, started=started)

    def api_error(self, resource: str, code: str) -> None:
        """Count a failed API server call (``resource`` one of :data:`API_RESOURCES`)."""
        self.api_errors.labels(resource=resource, code=code).inc()

    def serve(self, *, host: str, port: int) -> MetricsServer:
        """Serve ``/metrics`` in a daemon thread; call ``shutdown()`` on the result when done."""
        server, _thread = prometheus_client.start_http_server(
            port=port, addr=host, registry=self.registry
        )
        return server
