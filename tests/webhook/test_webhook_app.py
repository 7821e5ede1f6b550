"""The webhook's HTTP surface, driven in-process through httpx.ASGITransport.

The API server is replaced by a facts source that answers from memory: these tests are
about the AdmissionReview round trip and the HTTP error mapping, not the cluster reads
(e2e/test_webhook.py covers those against a real API server).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import hypothesis
import hypothesis.strategies as st
import pytest
import webhook_builders as build

from kubefal_webhook import app, settings, validation


@pytest.fixture
def source() -> build.MemoryFacts:
    return build.MemoryFacts(build.facts(config_maps={"files"}, secrets={"keys"}))


@pytest.fixture
async def client(source: build.MemoryFacts) -> AsyncIterator[httpx.AsyncClient]:
    webhook = app.create_app(settings.Settings(max_body_bytes=64 * 1024), source=source)
    async with build.in_process(webhook) as http:
        yield http


async def _review(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    reply = await client.post("/validate", json=body)
    assert reply.status_code == 200, reply.text
    document: dict[str, Any] = reply.json()
    assert document["apiVersion"] == "admission.k8s.io/v1"
    assert document["kind"] == "AdmissionReview"
    assert document["response"]["uid"] == body["request"]["uid"]
    response: dict[str, Any] = document["response"]
    return response


async def test_a_valid_falapp_is_allowed_and_the_uid_is_echoed(
    client: httpx.AsyncClient, source: build.MemoryFacts
) -> None:
    body = build.review_body(
        build.falapp(
            source={"configMapRef": {"name": "files"}}, envFrom=[{"secretRef": {"name": "keys"}}]
        )
    )
    response = await _review(client, body)
    assert response["allowed"] is True
    assert "status" not in response
    assert source.asked == [
        validation.References(
            namespace=build.NAMESPACE,
            config_maps=frozenset({"files"}),
            secrets=frozenset({"keys"}),
        )
    ]


async def test_an_unknown_machine_type_comes_back_denied_with_the_field(
    client: httpx.AsyncClient,
) -> None:
    response = await _review(client, build.review_body(build.falapp(machineTypes=["GPU-X999"])))
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert response["status"]["message"].startswith("spec.machineTypes[0]: ")


async def test_warnings_reach_the_response(client: httpx.AsyncClient) -> None:
    body = build.review_body(build.falapp(machineTypes=["GPU-H100"], numGpus=8))
    response = await _review(client, body)
    assert response["allowed"] is True
    assert any("recreate" in warning for warning in response["warnings"])


async def test_a_delete_is_allowed_without_reading_the_cluster(
    client: httpx.AsyncClient, source: build.MemoryFacts
) -> None:
    body = build.review_body(None, operation="DELETE", old=build.falapp(machineTypes=["X"]))
    response = await _review(client, body)
    assert response["allowed"] is True
    assert source.asked == []


async def test_an_unreadable_cluster_denies_with_a_service_unavailable_status(
    client: httpx.AsyncClient, source: build.MemoryFacts
) -> None:
    source.failure = "secrets is forbidden"
    response = await _review(client, build.review_body(build.falapp()))
    assert response["allowed"] is False
    assert response["status"]["code"] == 503
    assert "secrets is forbidden" in response["status"]["message"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "request"),
        (b'{"apiVersion": "v1", "kind": "Pod", "request": {}}', "request.uid"),
    ],
)
async def test_a_malformed_review_gets_400_with_a_detail(
    client: httpx.AsyncClient, content: bytes, problem: str
) -> None:
    reply = await client.post(
        "/validate", content=content, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400
    assert reply.headers["content-type"] == "application/json"
    assert problem in reply.json()["detail"]


async def test_an_oversized_review_gets_413_with_a_detail(client: httpx.AsyncClient) -> None:
    app_with_padding = build.falapp()
    app_with_padding["metadata"]["annotations"] = {"padding": "x" * 70_000}
    reply = await client.post("/validate", json=build.review_body(app_with_padding))
    assert reply.status_code == 413
    assert "larger than 65536 bytes" in reply.json()["detail"]


async def test_unknown_paths_and_methods_get_json_details(client: httpx.AsyncClient) -> None:
    missing = await client.get("/mutate")
    assert missing.status_code == 404
    assert "detail" in missing.json()
    wrong_method = await client.get("/validate")
    assert wrong_method.status_code == 405
    assert "detail" in wrong_method.json()


async def test_health_is_ok_and_readiness_follows_the_catalogue(
    client: httpx.AsyncClient, source: build.MemoryFacts
) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    source.failure = "connection refused"
    not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json() == {"detail": "connection refused"}
    assert (await client.get("/healthz")).status_code == 200


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@hypothesis.settings(
    max_examples=150, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
@hypothesis.given(
    operation=st.sampled_from(["CREATE", "UPDATE", "DELETE"]),
    path=st.sampled_from(
        [
            ("uid",),
            ("kind",),
            ("operation",),
            ("namespace",),
            ("object",),
            ("oldObject",),
            ("object", "metadata"),
            ("object", "spec"),
            ("object", "spec", "env"),
            ("object", "spec", "envFrom"),
            ("object", "spec", "source"),
            ("object", "spec", "machineTypes"),
        ]
    ),
    value=_json_values,
)
async def test_no_mangled_review_gets_a_500(
    operation: str, path: tuple[str, ...], value: object
) -> None:
    webhook = app.create_app(
        settings.Settings(), source=build.MemoryFacts(build.facts(config_maps={"files"}))
    )
    falapp = build.falapp(source={"configMapRef": {"name": "files"}})
    body = build.review_body(falapp, operation=operation, old=falapp)
    parent = body["request"]
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    async with build.in_process(webhook) as http:
        reply = await http.post("/validate", content=json.dumps(body))
    assert reply.status_code in (200, 400), reply.text
    if reply.status_code == 400:
        assert reply.json()["detail"]
    else:
        assert reply.json()["response"]["uid"] == body["request"]["uid"]
