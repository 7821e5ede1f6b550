"""``SyncServerlessClient`` apps and runners against the control plane and a real API server.

``apps.list``, ``apps.runners``, ``runners.list`` and ``apps.scale`` of the real fal SDK, with
FalApps in the API server and runner pods on kwok's fake nodes (ready when scheduled, pending
when no node fits), each checked against what Kubernetes holds.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import grpc
import isolate_proto
import pytest
from fal.api import SyncServerlessClient
from fal.sdk import AliasInfo, RunnerState
from google.protobuf import timestamp_pb2
from kubernetes import client as k8s

from e2e import controlplane_harness as harness
from e2e import operator_harness
from e2e.controlplane_harness import (
    ControlPlaneProcess,
    create_falapp,
    create_key,
    create_runner_pod,
    get_falapp,
    wait_pod_ready,
)
from kubefal_api import apikeys
from testkit import waiting

cp_tls = harness.cp_tls
key_namespace = harness.key_namespace
key = harness.key
plane = harness.plane

CUSTOM_SPEC = {
    "auth": "shared",
    "machineTypes": ["GPU-H100", "GPU-H200"],
    "regions": ["us-east"],
    "requestTimeout": 120,
    "startupTimeout": 900,
    "scaling": {
        "minConcurrency": 0,
        "maxConcurrency": 7,
        "keepAlive": 45,
        "concurrencyBuffer": 2,
        "concurrencyBufferPerc": 20,
        "scalingDelay": 3,
        "maxMultiplexing": 4,
    },
}


@pytest.fixture
def other_namespace(api_client: k8s.ApiClient) -> Iterator[str]:
    yield from operator_harness.fresh_namespace(api_client, prefix="e2e-cp-other-")


def _client(plane: ControlPlaneProcess, key: object) -> SyncServerlessClient:
    return SyncServerlessClient(host=plane.host, api_key=str(key))


def test_apps_list_shows_every_app_the_key_may_see_with_every_field(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    namespace: str,
    other_namespace: str,
    key: apikeys.ApiKey,
) -> None:
    custom = create_falapp(api_client, namespace=namespace, name="custom", **CUSTOM_SPEC)
    plain = create_falapp(api_client, namespace=namespace, name="plain")
    create_falapp(api_client, namespace=other_namespace, name="hidden")
    create_runner_pod(api_client, namespace=namespace, app="custom", pod="custom-ready")
    create_runner_pod(
        api_client, namespace=namespace, app="custom", pod="custom-pending", schedulable=False
    )
    wait_pod_ready(api_client, namespace=namespace, pod="custom-ready")

    apps = _client(plane, key).apps.list()

    assert apps == [
        AliasInfo(
            alias=f"{namespace}/custom",
            revision=custom["metadata"]["uid"],
            auth_mode="shared",
            keep_alive=45,
            max_concurrency=7,
            max_multiplexing=4,
            active_runners=2,
            min_concurrency=0,
            concurrency_buffer=2,
            concurrency_buffer_perc=20,
            scaling_delay=3,
            machine_types=["GPU-H100", "GPU-H200"],
            request_timeout=120,
            startup_timeout=900,
            valid_regions=["us-east"],
            environment_name=namespace,
            request_start_timeout=None,
        ),
        AliasInfo(
            alias=f"{namespace}/plain",
            revision=plain["metadata"]["uid"],
            auth_mode="private",
            keep_alive=60,
            max_concurrency=10,
            max_multiplexing=1,
            active_runners=0,
            min_concurrency=0,
            concurrency_buffer=0,
            concurrency_buffer_perc=0,
            scaling_delay=0,
            machine_types=["S"],
            request_timeout=3600,
            startup_timeout=600,
            valid_regions=[],
            environment_name=namespace,
            request_start_timeout=None,
        ),
    ]
    assert [app.alias for app in _client(plane, key).apps.list(filter="cust")] == [
        f"{namespace}/custom"
    ]


def test_an_all_namespaces_key_sees_every_namespace_and_an_environment_selects_one(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    key_namespace: str,
    namespace: str,
    other_namespace: str,
) -> None:
    create_falapp(api_client, namespace=namespace, name="one")
    create_falapp(api_client, namespace=other_namespace, name="two")
    client = _client(plane, create_key(api_client, key_namespace=key_namespace, namespaces=["*"]))

    everywhere = {app.alias for app in client.apps.list()}
    only_other = [app.alias for app in client.apps.list(environment_name=other_namespace)]

    assert {f"{namespace}/one", f"{other_namespace}/two"} <= everywhere
    assert only_other == [f"{other_namespace}/two"]


def test_apps_runners_reports_each_runner_pod_with_its_state_and_filters(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    namespace: str,
    key: apikeys.ApiKey,
) -> None:
    create_falapp(api_client, namespace=namespace, name="demo", machineTypes=["M"])
    create_runner_pod(api_client, namespace=namespace, app="demo", pod="demo-ready")
    create_runner_pod(
        api_client, namespace=namespace, app="demo", pod="demo-pending", schedulable=False
    )
    create_runner_pod(api_client, namespace=namespace, app="elsewhere", pod="other-app-pod")
    wait_pod_ready(api_client, namespace=namespace, pod="demo-ready")
    client = _client(plane, key)

    runners = {runner.runner_id: runner for runner in client.apps.runners(f"{namespace}/demo")}
    running = client.apps.runners("demo", state=["running"])
    pending = client.apps.runners("demo", state=["pending"])
    future = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(hours=1)
    past = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(hours=1)

    assert set(runners) == {"demo-ready", "demo-pending"}
    ready = runners["demo-ready"]
    assert ready.state is RunnerState.RUNNING
    assert ready.alias == f"{namespace}/demo"
    assert ready.machine_type == "M"
    assert ready.uptime.total_seconds() >= 0
    assert ready.external_metadata["present_in_group"] is True
    assert ready.external_metadata["leases"] == []
    assert runners["demo-pending"].state is RunnerState.PENDING
    assert [runner.runner_id for runner in running] == ["demo-ready"]
    assert [runner.runner_id for runner in pending] == ["demo-pending"]
    assert client.apps.runners("demo", since=future) == []
    assert len(client.apps.runners("demo", since=past)) == 2


def test_runners_list_shows_the_runners_of_every_app_the_key_may_see(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    namespace: str,
    other_namespace: str,
    key: apikeys.ApiKey,
) -> None:
    create_falapp(api_client, namespace=namespace, name="mine")
    create_falapp(api_client, namespace=other_namespace, name="theirs")
    create_runner_pod(api_client, namespace=namespace, app="mine", pod="mine-0")
    create_runner_pod(api_client, namespace=other_namespace, app="theirs", pod="theirs-0")
    wait_pod_ready(api_client, namespace=namespace, pod="mine-0")
    client = _client(plane, key)

    runners = client.runners.list()
    later = client.runners.list(
        since=datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(hours=1)
    )

    assert [(r.runner_id, r.alias, r.state) for r in runners] == [
        ("mine-0", f"{namespace}/mine", RunnerState.RUNNING)
    ]
    assert later == []


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(253_402_300_800, 0), (-62_135_596_801, 0), (2**62, 0), (0, -1), (0, 1_000_000_000)],
)
def test_a_runner_listing_since_a_time_no_timestamp_holds_is_invalid_argument(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    namespace: str,
    key: apikeys.ApiKey,
    seconds: int,
    nanos: int,
) -> None:
    """start_time beyond year 9999 (or nanos beyond a second) was INTERNAL, with a traceback."""
    create_falapp(api_client, namespace=namespace, name="timed")
    start = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    metadata = [("auth-key-id", key.id), ("auth-key", key.secret)]
    credentials = grpc.ssl_channel_credentials(plane.tls.ca_bundle.read_bytes())
    refused = []
    with grpc.secure_channel(plane.host, credentials) as channel:
        stub = isolate_proto.IsolateControllerStub(channel)
        for call, request in (
            (stub.ListRunners, isolate_proto.ListRunnersRequest(start_time=start)),
            (
                stub.ListAliasRunners,
                isolate_proto.ListAliasRunnersRequest(alias=f"{namespace}/timed", start_time=start),
            ),
        ):
            with pytest.raises(grpc.RpcError) as raised:
                call(request, metadata=metadata, timeout=30)
            refused.append((raised.value.code(), raised.value.details()))  # type: ignore[attr-defined]

    assert [code for code, _ in refused] == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert all(details.startswith("start_time: ") for _, details in refused)


def test_apps_scale_writes_the_falapp_spec_and_leaves_omitted_fields_alone(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    namespace: str,
    key: apikeys.ApiKey,
) -> None:
    create_falapp(api_client, namespace=namespace, name="scaled", **CUSTOM_SPEC)
    client = _client(plane, key)

    updated = client.apps.scale(
        f"{namespace}/scaled",
        keep_alive=7,
        max_concurrency=5,
        min_concurrency=1,
        max_multiplexing=2,
        concurrency_buffer=1,
        concurrency_buffer_perc=10,
        request_timeout=99,
        startup_timeout=120,
        machine_types=["GPU-H200"],
        regions=["us-west"],
    )
    again = client.apps.scale("scaled", keep_alive=8)

    spec = get_falapp(api_client, namespace=namespace, name="scaled")["spec"]
    assert spec["scaling"] == {
        "minConcurrency": 1,
        "maxConcurrency": 5,
        "keepAlive": 8,
        "concurrencyBuffer": 1,
        "concurrencyBufferPerc": 10,
        "scalingDelay": 3,
        "maxMultiplexing": 2,
        "policy": "fal",  # the CRD's default; fal's protocol has no field for it
    }
    assert spec["machineTypes"] == ["GPU-H200"]
    assert spec["regions"] == ["us-west"]
    assert (spec["requestTimeout"], spec["startupTimeout"], spec["auth"]) == (99, 120, "shared")
    assert (updated.keep_alive, updated.max_concurrency, updated.min_concurrency) == (7, 5, 1)
    assert updated.machine_types == ["GPU-H200"] and updated.valid_regions == ["us-west"]
    assert (again.keep_alive, again.max_concurrency, again.scaling_delay) == (8, 5, 3)
    app = get_falapp(api_client, namespace=namespace, name="scaled")
    assert app["metadata"]["annotations"]["kubefal.io/last-changed-by"] == key.id

    def scaled_event() -> bool:
        events = k8s.CoreV1Api(api_client).list_namespaced_event(namespace).items
        return any(e.reason == "Scaled" and key.id in (e.message or "") for e in events)

    waiting.wait_for(scaled_event, timeout=30, description="a Scaled event naming the key")


def test_a_scale_the_falapp_schema_refuses_changes_nothing(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    namespace: str,
    key: apikeys.ApiKey,
) -> None:
    create_falapp(api_client, namespace=namespace, name="strict", scaling={"maxConcurrency": 3})
    client = _client(plane, key)
    before = get_falapp(api_client, namespace=namespace, name="strict")

    with pytest.raises(grpc.RpcError) as raised:
        client.apps.scale("strict", min_concurrency=4, keep_alive=1)

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert raised.value.details().startswith("min_concurrency: ")  # type: ignore[attr-defined]
    after = get_falapp(api_client, namespace=namespace, name="strict")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_a_bare_name_in_two_namespaces_is_ambiguous(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    key_namespace: str,
    namespace: str,
    other_namespace: str,
) -> None:
    create_falapp(api_client, namespace=namespace, name="twin")
    create_falapp(api_client, namespace=other_namespace, name="twin")
    client = _client(
        plane,
        create_key(
            api_client, key_namespace=key_namespace, namespaces=[namespace, other_namespace]
        ),
    )

    with pytest.raises(grpc.RpcError) as raised:
        client.apps.runners("twin")

    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert f"{namespace}/twin" in raised.value.details()  # type: ignore[attr-defined]
    assert client.apps.runners(f"{other_namespace}/twin") == []
