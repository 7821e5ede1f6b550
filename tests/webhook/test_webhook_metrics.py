"""The webhook's Prometheus counts: every answer is counted once, with bounded label values.

Reviews go through the real app in-process (httpx.ASGITransport) with the cluster replaced by
facts from memory; the API error counts come from a real :class:`cluster.ClusterReader` calling
a real HTTP server that fails (or a port nobody listens on). The process-level test, the real
``python -m kubefal_webhook`` and its ``/metrics`` listener, is e2e/test_webhook.py; here only
a metrics port in use, which stops the process at start.
"""

from __future__ import annotations

import http.server
import json
import pathlib
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import kubernetes.client
import pytest
import webhook_builders as build

from kubefal_webhook import app, cluster, metrics, settings, validation
from testkit import certs

REVIEWS = "kubefal_webhook_admission_reviews_total"
DURATION_COUNT = "kubefal_webhook_admission_duration_seconds_count"
INVALID = "kubefal_webhook_invalid_requests_total"
API_ERRORS = "kubefal_webhook_api_errors_total"


def value(instruments: metrics.Metrics, name: str, **labels: str) -> float:
    sample = instruments.registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


def label_values(instruments: metrics.Metrics) -> set[str]:
    """Every label value of every sample the registry serves."""
    return {
        label
        for family in instruments.registry.collect()
        for sample in family.samples
        for label in sample.labels.values()
    }


@pytest.fixture
def source() -> build.MemoryFacts:
    return build.MemoryFacts(build.facts(config_maps={"files"}))


@pytest.fixture
def instruments() -> metrics.Metrics:
    return metrics.Metrics()


@pytest.fixture
async def client(
    source: build.MemoryFacts, instruments: metrics.Metrics
) -> AsyncIterator[httpx.AsyncClient]:
    webhook = app.create_app(
        settings.Settings(max_body_bytes=64 * 1024), source=source, instruments=instruments
    )
    async with build.in_process(webhook) as http:
        yield http


def test_the_series_alerts_read_exist_at_zero_before_any_review(
    instruments: metrics.Metrics,
) -> None:
    for result in metrics.RESULTS:
        for operation in ("CREATE", "UPDATE"):
            labels = {"kind": "FalApp", "operation": operation, "result": result}
            assert instruments.registry.get_sample_value(REVIEWS, labels) == 0.0
    assert instruments.registry.get_sample_value(INVALID, {"reason": "malformed"}) == 0.0


async def test_an_allowed_and_a_denied_falapp_are_counted_by_result(
    client: httpx.AsyncClient, instruments: metrics.Metrics
) -> None:
    allowed = build.review_body(build.falapp(source={"configMapRef": {"name": "files"}}))
    denied = build.review_body(build.falapp(machineTypes=["GPU-NOPE"]), operation="CREATE")
    first = await client.post("/validate", json=allowed)
    second = await client.post("/validate", json=denied)
    third = await client.post("/validate", json=denied)
    assert [r.json()["response"]["allowed"] for r in (first, second, third)] == [
        True,
        False,
        False,
    ]
    create = {"kind": "FalApp", "operation": "CREATE"}
    assert value(instruments, REVIEWS, **create, result="allowed") == 1
    assert value(instruments, REVIEWS, **create, result="denied") == 2
    assert value(instruments, REVIEWS, **create, result="error") == 0
    assert value(instruments, DURATION_COUNT, kind="FalApp", result="allowed") == 1
    assert value(instruments, DURATION_COUNT, kind="FalApp", result="denied") == 2


async def test_an_undecided_review_is_an_error(
    client: httpx.AsyncClient, source: build.MemoryFacts, instruments: metrics.Metrics
) -> None:
    source.failure = "the API server is unreachable"
    reply = await client.post("/validate", json=build.review_body(build.falapp()))
    assert reply.status_code == 200
    assert reply.json()["response"]["status"]["code"] == 503
    labels = {"kind": "FalApp", "operation": "CREATE"}
    assert value(instruments, REVIEWS, **labels, result="error") == 1
    assert value(instruments, REVIEWS, **labels, result="denied") == 0


async def test_a_delete_and_an_unchanged_update_are_allowed_reviews(
    client: httpx.AsyncClient, instruments: metrics.Metrics
) -> None:
    obj = build.falapp()
    await client.post("/validate", json=build.review_body(None, operation="DELETE", old=obj))
    await client.post("/validate", json=build.review_body(obj, operation="UPDATE", old=obj))
    assert value(instruments, REVIEWS, kind="FalApp", operation="DELETE", result="allowed") == 1
    assert value(instruments, REVIEWS, kind="FalApp", operation="UPDATE", result="allowed") == 1


async def test_a_callers_kind_and_names_never_become_label_values(
    client: httpx.AsyncClient, instruments: metrics.Metrics
) -> None:
    hostile = "Evil\u202e" + "x" * 300
    obj = {**build.falapp(), "metadata": {"name": hostile, "namespace": hostile}}
    body = build.review_body(obj, kind={"group": hostile, "version": "v1", "kind": hostile})
    body["request"]["name"] = hostile
    body["request"]["namespace"] = hostile
    reply = await client.post("/validate", json=body)
    assert reply.json()["response"]["allowed"] is True
    assert value(instruments, REVIEWS, kind="other", operation="CREATE", result="allowed") == 1
    assert not any(hostile in label for label in label_values(instruments))
    assert label_values(instruments) <= {
        "FalApp",
        "other",
        "unknown",
        *metrics.OPERATIONS,
        *metrics.RESULTS,
        *metrics.INVALID_REASONS,
        *(str(float(bucket)) for bucket in metrics.LATENCY_BUCKETS),
        "+Inf",
    }


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"not json", "not JSON"),
        (b"[]", "JSON object"),
        (json.dumps({"apiVersion": "v1", "kind": "Pod"}).encode(), "AdmissionReview"),
        # Nested deeper than Python's recursion limit: json.loads raised RecursionError, a 500.
        (b"[" * 20_000 + b"]" * 20_000, "nested too deeply"),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "nested too deeply"),
    ],
    ids=["not-json", "not-an-object", "not-a-review", "deep-list", "deep-object"],
)
async def test_a_malformed_request_is_a_400_counted_as_invalid(
    client: httpx.AsyncClient, instruments: metrics.Metrics, body: bytes, detail: str
) -> None:
    reply = await client.post(
        "/validate", content=body, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400, reply.text
    assert detail in reply.json()["detail"]
    assert value(instruments, INVALID, reason="malformed") == 1
    assert value(instruments, REVIEWS, kind="unknown", operation="unknown", result="error") == 1
    assert value(instruments, DURATION_COUNT, kind="unknown", result="error") == 1


async def test_an_oversized_request_is_a_413_counted_as_invalid(
    client: httpx.AsyncClient, instruments: metrics.Metrics
) -> None:
    reply = await client.post("/validate", content=b"x" * (64 * 1024 + 1))
    assert reply.status_code == 413
    assert "larger than" in reply.json()["detail"]
    assert value(instruments, INVALID, reason="too_large") == 1
    assert value(instruments, INVALID, reason="malformed") == 0
    assert value(instruments, REVIEWS, kind="unknown", operation="unknown", result="error") == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [(403, "403"), (500, "500"), (599, "599"), (600, "other"), (0, "other"), (None, "other")],
)
def test_api_error_codes_are_bounded(status: object, code: str) -> None:
    assert metrics.api_error_code(status) == code


class _FailingApi(http.server.BaseHTTPRequestHandler):
    """An API server that answers every call with 500 Internal Server Error."""

    def do_GET(self) -> None:
        body = json.dumps({"kind": "Status", "code": 500, "message": "etcd down"}).encode()
        self.send_response(500)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def failing_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FailingApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _reader(host: str, instruments: metrics.Metrics) -> cluster.ClusterReader:
    configuration = kubernetes.client.Configuration()
    configuration.host = host
    configuration.retries = 0
    return cluster.ClusterReader(
        kubernetes.client.ApiClient(configuration),
        catalogue_namespace="kubefal-system",
        catalogue_name="kubefal-machines",
        cache_seconds=0,
        timeout_seconds=5,
        instruments=instruments,
    )


def test_failed_api_calls_are_counted_by_resource_and_status(
    failing_api: str, instruments: metrics.Metrics
) -> None:
    reader = _reader(failing_api, instruments)
    with pytest.raises(cluster.ClusterStateError, match="500"):
        reader.catalogue()
    assert value(instruments, API_ERRORS, resource="configmap", code="500") == 1
    with pytest.raises(cluster.ClusterStateError, match="500"):
        reader._existing(
            kind=validation.SECRET,
            read=reader._core.read_namespaced_secret,
            namespace="team",
            names={"keys"},
        )
    assert value(instruments, API_ERRORS, resource="secret", code="500") == 1
    # Node capacity is advisory: the GPU rules are skipped, and the failure still counted.
    assert reader._read_gpu_capacity(label="nvidia.com/gpu.product", resource="gpu") is None
    assert value(instruments, API_ERRORS, resource="node", code="500") == 1


def test_an_unreachable_api_server_is_counted_as_transport(instruments: metrics.Metrics) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    reader = _reader(f"http://127.0.0.1:{port}", instruments)
    with pytest.raises(cluster.ClusterStateError, match="cannot reach"):
        reader.catalogue()
    assert value(instruments, API_ERRORS, resource="configmap", code="transport") == 1


def test_a_metrics_port_in_use_stops_the_webhook_at_start_saying_so(
    tmp_path: pathlib.Path,
) -> None:
    _ca, cert, key = certs.issue_serving_certificate(
        tmp_path / "tls", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "kubefal_webhook",
                f"--tls-cert={cert}",
                f"--tls-key={key}",
                "--metrics-host=127.0.0.1",
                f"--metrics-port={port}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert completed.returncode != 0
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in completed.stderr
    assert "Traceback" not in completed.stderr
