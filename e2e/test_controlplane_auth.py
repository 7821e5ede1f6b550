"""The control plane's skeleton against a real API server: TLS, API keys, refusals.

The control plane runs as ``python -m kubefal_controlplane`` with the local CA's certificate;
clients are the real ``fal`` SDK (``SyncServerlessClient``) and, for metadata the SDK cannot
omit, the real ``isolate_proto`` stub. Keys are Secrets as ``kubefal keys create`` writes them.
"""

from __future__ import annotations

import pathlib

import grpc
import isolate_proto
import pytest
from fal.api import SyncServerlessClient
from fal.api.api import FalServerlessError
from kubernetes import client as k8s

from e2e import controlplane_harness as harness
from e2e.controlplane_harness import ControlPlaneProcess, create_falapp, create_key
from kubefal_api import apikeys

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
