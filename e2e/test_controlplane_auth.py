"""The control plane's skeleton against a real API server: TLS, API keys, refusals.

The control plane runs as ``python -m kubefal_controlplane`` with the local CA's certificate;
clients are the real ``fal`` SDK (``SyncServerlessClient``) and, for metadata the SDK cannot
omit, the real ``isolate_proto`` stub. Keys are Secrets as ``kubefal keys create`` writes them.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import isolate_proto
import pytest
from fal.api import SyncServerlessClient
from fal.api.api import FalServerlessError
from kubernetes import client as k8s

from e2e import controlplane_harness as harness
from e2e.conftest import ClusterHandle
from e2e.controlplane_harness import ControlPlaneProcess, create_falapp, create_key
from kubefal_api import apikeys
from kubefal_cli import localca

cp_tls = harness.cp_tls
key_namespace = harness.key_namespace
key = harness.key
plane = harness.plane


def _stub_call(plane: ControlPlaneProcess, metadata: list[tuple[str, str]]) -> grpc.RpcError:
    credentials = grpc.ssl_channel_credentials(plane.tls.ca_bundle.read_bytes())
    with grpc.secure_channel(plane.host, credentials) as channel:
        stub = isolate_proto.IsolateControllerStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ListAliases(isolate_proto.ListAliasesRequest(), metadata=metadata, timeout=30)
    return raised.value  # type: ignore[return-value]


def test_a_call_without_a_key_is_unauthenticated(plane: ControlPlaneProcess) -> None:
    error = _stub_call(plane, [])

    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "Missing API key" in (error.details() or "")


def test_a_malformed_key_is_unauthenticated(plane: ControlPlaneProcess) -> None:
    error = _stub_call(plane, [("auth-key-id", "nope"), ("auth-key", "x")])

    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "key id must be 'kf'" in (error.details() or "")


def test_an_unknown_a_wrong_and_a_revoked_key_are_unauthenticated(
    plane: ControlPlaneProcess, api_client: k8s.ApiClient, key_namespace: str, namespace: str
) -> None:
    good = create_key(api_client, key_namespace=key_namespace, namespaces=[namespace])
    revoked = create_key(
        api_client, key_namespace=key_namespace, namespaces=[namespace], revoked=True
    )
    unknown = apikeys.generate_key()
    cases = {
        "unknown": (unknown, f"no key {unknown.id} exists"),
        "wrong": (apikeys.ApiKey(good.id, "wrong-secret"), "wrong secret"),
        "revoked": (revoked, "has been revoked"),
    }

    for label, (key, message) in cases.items():
        client = SyncServerlessClient(host=plane.host, api_key=str(key))
        with pytest.raises(grpc.RpcError) as raised:
            client.apps.list()
        assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED, label  # type: ignore[attr-defined]
        assert message in raised.value.details(), label  # type: ignore[attr-defined]


def test_a_key_revoked_after_use_is_refused_at_once(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    key_namespace: str,
    namespace: str,
    key: apikeys.ApiKey,
) -> None:
    client = SyncServerlessClient(host=plane.host, api_key=str(key))
    assert client.apps.list() == []

    k8s.CoreV1Api(api_client).patch_namespaced_secret(
        apikeys.secret_name(key.id), key_namespace, {"stringData": {"revoked": "true"}}
    )

    with pytest.raises(grpc.RpcError) as raised:
        client.apps.list()
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_another_namespaces_app_is_permission_denied(
    plane: ControlPlaneProcess, api_client: k8s.ApiClient, key_namespace: str, namespace: str
) -> None:
    key = create_key(api_client, key_namespace=key_namespace, namespaces=["team-elsewhere"])
    create_falapp(api_client, namespace=namespace, name="secret-app")
    client = SyncServerlessClient(host=plane.host, api_key=str(key))

    with pytest.raises(grpc.RpcError) as raised:
        client.apps.runners(f"{namespace}/secret-app")

    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert repr(namespace) in raised.value.details()  # type: ignore[attr-defined]
    assert client.apps.list() == []


def test_a_bad_app_name_is_invalid_argument_naming_the_field(
    plane: ControlPlaneProcess,
    namespace: str,
    key: apikeys.ApiKey,
) -> None:
    client = SyncServerlessClient(host=plane.host, api_key=str(key))

    with pytest.raises(grpc.RpcError) as raised:
        client.apps.runners("Not_An_App")

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert raised.value.details().startswith("alias: 'Not_An_App'")  # type: ignore[attr-defined]


def test_a_missing_app_is_not_found(
    plane: ControlPlaneProcess,
    namespace: str,
    key: apikeys.ApiKey,
) -> None:
    client = SyncServerlessClient(host=plane.host, api_key=str(key))

    with pytest.raises(grpc.RpcError) as raised:
        client.apps.scale(f"{namespace}/ghost", keep_alive=5)

    assert raised.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert f"{namespace}/ghost" in raised.value.details()  # type: ignore[attr-defined]


def test_an_rpc_not_served_yet_is_unimplemented_naming_the_fal_command(
    plane: ControlPlaneProcess,
    namespace: str,
    key: apikeys.ApiKey,
) -> None:
    client = SyncServerlessClient(host=plane.host, api_key=str(key))

    credentials = grpc.ssl_channel_credentials(plane.tls.ca_bundle.read_bytes())
    with grpc.secure_channel(plane.host, credentials) as channel:
        stub = isolate_proto.IsolateControllerStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.SetAlias(
                isolate_proto.SetAliasRequest(alias="x", revision="y"),
                metadata=[("auth-key-id", key.id), ("auth-key", key.secret)],
                timeout=30,
            )
    # The SDK wraps some calls' errors in its own exception, keeping the message.
    with pytest.raises(FalServerlessError) as wrapped:
        client.environments.list()

    assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    assert "`fal apps set-rev` is not supported by kubefal yet" in raised.value.details()  # type: ignore[attr-defined]
    assert "`fal environments list` is not supported by kubefal yet" in str(wrapped.value)


@pytest.mark.parametrize(
    ("method", "body"),
    [
        # alias "\xff": a string field whose bytes are not UTF-8
        ("ListAliasRunners", b"\x0a\x01\xff"),
        ("RegisterApplication", b"\x0a\x01\xff"),  # a server-streaming call
        ("ListRunners", b"\xff\xff\xff"),  # not protobuf at all
    ],
)
def test_a_request_that_is_not_its_message_is_invalid_argument(
    plane: ControlPlaneProcess, key: apikeys.ApiKey, method: str, body: bytes
) -> None:
    """grpc answered INTERNAL ('Exception deserializing request!') and logged a traceback."""
    credentials = grpc.ssl_channel_credentials(plane.tls.ca_bundle.read_bytes())
    metadata = [("auth-key-id", key.id), ("auth-key", key.secret)]
    with grpc.secure_channel(plane.host, credentials) as channel:
        path = f"/controller.IsolateController/{method}"
        with pytest.raises(grpc.RpcError) as raised:
            if method == "RegisterApplication":
                list(channel.unary_stream(path)(body, metadata=metadata, timeout=30))
            else:
                channel.unary_unary(path)(body, metadata=metadata, timeout=30)

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert raised.value.details().startswith("request: Error parsing message")  # type: ignore[attr-defined]


def test_the_server_logs_no_traceback(plane: ControlPlaneProcess) -> None:
    log = pathlib.Path(plane.log_path).read_text(errors="replace")

    assert "Traceback" not in log


# ---- failed key checks are throttled before hashing; idle h2 connections are closed ---------


@pytest.fixture
def throttled_plane(
    request: pytest.FixtureRequest,
    cluster: ClusterHandle,
    falapp_crd: dict[str, Any],
    cp_tls: localca.LocalTls,
    key_namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> Iterator[ControlPlaneProcess]:
    """A control plane of its own (the throttles it fills would refuse other tests' calls),
    started with the test's flags (``@pytest.mark.parametrize("throttled_plane", [flags],
    indirect=True)``)."""
    with harness.plane_for_test(
        cluster,
        tls=cp_tls,
        key_namespace=key_namespace,
        tmp_path=tmp_path,
        e2e_logs=e2e_logs,
        arguments=tuple(request.param),
    ) as process:
        yield process


def _list_applications(plane: ControlPlaneProcess, key: apikeys.ApiKey) -> grpc.RpcError | None:
    """The call's failure, or None when it succeeded."""
    credentials = grpc.ssl_channel_credentials(plane.tls.ca_bundle.read_bytes())
    with grpc.secure_channel(plane.host, credentials) as channel:
        stub = isolate_proto.IsolateControllerStub(channel)
        try:
            stub.ListApplications(
                isolate_proto.ListApplicationsRequest(),
                metadata=[("auth-key-id", key.id), ("auth-key", key.secret)],
                timeout=60,
            )
        except grpc.RpcError as error:
            return error
    return None


def _users_current(
    plane: ControlPlaneProcess, key: apikeys.ApiKey, *, source: str
) -> httpx.Response:
    """REST ``GET /users/current`` (fal's --team check) from the local address ``source``."""
    transport = httpx.HTTPTransport(verify=str(plane.tls.ca_bundle), local_address=source)
    with httpx.Client(transport=transport, timeout=60) as client:
        return client.get(
            f"https://{plane.host}/users/current", headers={"Authorization": f"Key {key}"}
        )


@pytest.mark.parametrize(
    "throttled_plane", [("--auth-failures-per-key=3", "--auth-failures-per-ip=0")], indirect=True
)
def test_a_burst_of_wrong_secrets_for_one_key_id_stops_being_hashed_while_another_key_works(
    throttled_plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    key_namespace: str,
    namespace: str,
) -> None:
    """Anyone who knows a key id (ids are not secret) made the control plane hash one wrong
    secret after another, about 0.1 s of CPU each, as fast as they could send them."""
    victim = create_key(api_client, key_namespace=key_namespace, namespaces=[namespace])
    other = create_key(api_client, key_namespace=key_namespace, namespaces=[namespace])

    hashed = [
        _list_applications(throttled_plane, apikeys.ApiKey(victim.id, f"wrong-{n}")) for n in "abc"
    ]
    refused = _list_applications(throttled_plane, apikeys.ApiKey(victim.id, "wrong-d"))
    rest = _users_current(throttled_plane, apikeys.ApiKey(victim.id, "wrong-e"), source="127.0.0.1")

    for error in hashed:  # checked: the secret was wrong
        assert error is not None and error.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert "wrong secret" in (error.details() or "")  # type: ignore[attr-defined]
    # Refused before the hash: an answer that no verification could give.
    assert refused is not None
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert f"Too many failed attempts for API key {victim.id}" in (refused.details() or "")  # type: ignore[attr-defined]
    assert rest.status_code == 429
    assert rest.json()["detail"].startswith(f"Too many failed attempts for API key {victim.id}")
    # Another key id is not affected, over gRPC nor REST.
    assert _list_applications(throttled_plane, other) is None
    account = _users_current(throttled_plane, other, source="127.0.0.1")
    assert account.status_code == 200, account.text


@pytest.mark.parametrize(
    "throttled_plane", [("--auth-failures-per-key=0", "--auth-failures-per-ip=3")], indirect=True
)
def test_failed_checks_are_counted_per_client_ip_the_front_door_saw(
    throttled_plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    key_namespace: str,
    namespace: str,
) -> None:
    """gRPC calls reach grpcio over the front door's Unix socket: they are charged to the TLS
    client's address (127.0.0.1 here), so its REST calls are throttled too, and another
    address (127.0.0.2) is not."""
    good = create_key(api_client, key_namespace=key_namespace, namespaces=[namespace])
    ids = [create_key(api_client, key_namespace=key_namespace, namespaces=[namespace]).id]
    ids += [create_key(api_client, key_namespace=key_namespace, namespaces=[namespace]).id]
    ids += [good.id]

    hashed = [
        _list_applications(throttled_plane, apikeys.ApiKey(key_id, "wrong")) for key_id in ids
    ]
    refused = _list_applications(throttled_plane, apikeys.ApiKey(good.id, "wrong-again"))
    rest_here = _users_current(
        throttled_plane, apikeys.ApiKey(good.id, "wrong-3"), source="127.0.0.1"
    )
    rest_elsewhere = _users_current(throttled_plane, good, source="127.0.0.2")
    wrong_elsewhere = _users_current(
        throttled_plane, apikeys.ApiKey(good.id, "wrong-4"), source="127.0.0.2"
    )

    assert [error.code() if error else None for error in hashed] == [  # type: ignore[attr-defined]
        grpc.StatusCode.UNAUTHENTICATED
    ] * 3
    assert refused is not None
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "from this address" in (refused.details() or "")  # type: ignore[attr-defined]
    assert rest_here.status_code == 429
    assert "from this address" in rest_here.json()["detail"]
    assert rest_elsewhere.status_code == 200, rest_elsewhere.text
    assert wrong_elsewhere.status_code == 401  # checked (hashed), not throttled


def _h2_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of the complete HTTP/2 frames in ``data``."""
    frames = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        if len(data) < 9 + length:
            break
        frames.append((data[3], data[9 : 9 + length]))
        data = data[9 + length :]
    return frames


@pytest.mark.parametrize("throttled_plane", [("--grpc-idle-timeout=2",)], indirect=True)
def test_an_idle_h2_connection_is_closed_after_the_idle_timeout(
    throttled_plane: ControlPlaneProcess,
) -> None:
    """Unauthenticated clients held every place under --rest-max-connections with h2
    connections that never sent a call; grpcio now ends them (GOAWAY, then the close)."""
    context = ssl.create_default_context(cafile=str(throttled_plane.tls.ca_bundle))
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", throttled_plane.port), timeout=120)
    received = b""
    with context.wrap_socket(raw, server_hostname="localhost") as idle:
        assert idle.selected_alpn_protocol() == "h2"
        idle.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        # Read until the server closes (the 120 s socket timeout is only a safety net).
        with contextlib.suppress(ssl.SSLEOFError, ConnectionResetError):
            while chunk := idle.recv(65536):
                received += chunk

    goaways = [payload for kind, payload in _h2_frames(received) if kind == 0x07]
    assert goaways, received
    assert b"idle" in goaways[0][8:]
