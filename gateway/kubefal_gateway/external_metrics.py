"""The ``external.metrics.k8s.io/v1beta1`` API, so a plain HPA scales runners from our numbers.

With the ``hpa`` actuator the operator renders an ``autoscaling/v2`` HorizontalPodAutoscaler
on the External metric ``kubefal-desired-runners`` selected by ``kubefal.io/app=<name>``,
with an ``AverageValue`` target of 1: the HPA controller then asks the API server, which
asks this server through the aggregation layer (an APIService), and sets
``replicas = desired runners``. Keep-alive and buffers are already in that number.

This is a small raw ASGI app: discovery documents, one list endpoint, and JSON errors in
the Kubernetes ``Status`` shape. It is served over TLS on its own port, because the
aggregator only talks HTTPS.
"""

from __future__ import annotations

import datetime
import json
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from kubefal_gateway import http_api

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
METRIC_NAME = "kubefal-desired-runners"
APP_LABEL = "kubefal.io/app"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class DesiredRunnerCounts(Protocol):
    """The gateway's desired runner count of an app, None when the app is unknown."""

    def desired_runners(self, app_id: str) -> int | None: ...


def parse_label_selector(selector: str) -> dict[str, str]:
    """``a=b,c==d`` → ``{"a": "b", "c": "d"}``; set-based selectors are not supported."""
    labels: dict[str, str] = {}
    for term in filter(None, (part.strip() for part in selector.split(","))):
        key, separator, value = term.replace("==", "=").partition("=")
        if not separator or not key or "!" in key:
            raise ValueError(f"unsupported label selector term {term!r}: use {APP_LABEL}=<name>")
        labels[key.strip()] = value.strip()
    return labels


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _resource_list() -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [
            {
                "name": METRIC_NAME,
                "singularName": "",
                "namespaced": True,
                "kind": "ExternalMetricValueList",
                "verbs": ["get"],
            }
        ],
    }


def _group() -> dict[str, Any]:
    version = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [version],
        "preferredVersion": version,
    }


def metric_values(
    source: DesiredRunnerCounts, *, namespace: str, metric: str, selector: str
) -> tuple[int, dict[str, Any]]:
    """Answer one metric list request: (HTTP status, body)."""
    if metric != METRIC_NAME:
        return 404, _status(404, "NotFound", f"unknown external metric {metric!r}")
    try:
        labels = parse_label_selector(selector)
    except ValueError as error:
        return 400, _status(400, "BadRequest", str(error))
    app_name = labels.get(APP_LABEL)
    if not app_name:
        return 400, _status(
            400, "BadRequest", f"labelSelector must name the app: {APP_LABEL}=<name>"
        )
    desired = source.desired_runners(f"{namespace}/{app_name}")
    if desired is None:
        return 404, _status(404, "NotFound", f"the gateway knows no app {namespace}/{app_name}")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return 200, {
        "kind": "ExternalMetricValueList",
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": [
            {
                "metricName": METRIC_NAME,
                "metricLabels": {APP_LABEL: app_name},
                "timestamp": now,
                "value": str(desired),
            }
        ],
    }


def route(source: DesiredRunnerCounts, *, method: str, path: str, query: str) -> tuple[int, Any]:
    """Map a request to (status, JSON body); pure, so it is tested without a server."""
    if method != "GET":
        return 405, _status(405, "MethodNotAllowed", "only GET is served")
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/") if p]
    if parts in (["healthz"], ["readyz"], ["livez"]):
        return 200, "ok"
    if parts == ["apis"]:
        return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group()]}
    if parts == ["apis", GROUP]:
        return 200, _group()
    if parts == ["apis", GROUP, VERSION]:
        return 200, _resource_list()
    if len(parts) == 6 and parts[:3] == ["apis", GROUP, VERSION] and parts[3] == "namespaces":
        selector = urllib.parse.parse_qs(query).get("labelSelector", [""])[0]
        return metric_values(source, namespace=parts[4], metric=parts[5], selector=selector)
    return 404, _status(404, "NotFound", f"no route for {path}")


class ExternalMetricsApp:
    """ASGI application serving :func:`route`."""

    def __init__(self, source: DesiredRunnerCounts) -> None:
        self.source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await http_api.serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        status, body = route(
            self.source,
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
        )
        payload = (body if isinstance(body, str) else json.dumps(body)).encode()
        content_type = b"text/plain" if isinstance(body, str) else b"application/json"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
