"""The chart's control plane (issue 10, item 6): its own Deployment, Service, ServiceAccount,
RBAC and NetworkPolicy, run with the image and settings the other processes use.

Rendered with the real ``helm`` binary (``helm template``, no cluster). The settings the
Deployment passes are parsed by the control plane's own settings code, and the real
``python -m kubefal_controlplane`` is started with them and the chart's generated certificate:
a gRPC client trusting only the chart's CA completes a call under the Service's DNS name.
"""

from __future__ import annotations

import base64
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509
from isolate_proto import controller_pb2
from isolate_proto.controller_pb2_grpc import IsolateControllerStub

from kubefal_controlplane import settings as controlplane_settings
from testkit import processes
from testkit.ports import free_port
from tests.charthelm import (
    NAMESPACE,
    container,
    find,
    helm_template,
    render,
)

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out


def plain_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The container's env with Secret references stubbed (their names are checked apart)."""
    return {
        item["name"]: item.get("value", "from-a-secret")
        for item in container(deployment).get("env", [])
    }


def parse_settings(
    deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> controlplane_settings.Settings:
    for name in list(os.environ):
        if name.startswith("KUBEFAL_") or name == "KUBECONFIG":
            monkeypatch.delenv(name)
    for name, value in plain_env(deployment).items():
        monkeypatch.setenv(name, value)
    return controlplane_settings.from_args(container(deployment)["args"])


def test_the_control_plane_runs_the_operator_image_with_the_settings_the_chart_gives_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = render({"operator": {"image": {"repository": "registry.example/kf", "tag": "9"}}})
    deployment = find(objects, "Deployment", "kubefal-controlplane")
    box = container(deployment)
    assert box["image"] == "registry.example/kf:9"
    assert box["image"] == container(find(objects, "Deployment", "kubefal-operator"))["image"]
    assert box["command"] == ["python", "-m", "kubefal_controlplane"]
    loaded = parse_settings(deployment, monkeypatch)
    ports = {port["name"]: port["containerPort"] for port in box["ports"]}
    assert (loaded.host, loaded.port) == ("0.0.0.0", ports["grpc"])
    mounts = {mount["name"]: mount["mountPath"] for mount in box["volumeMounts"]}
    assert loaded.tls_cert == pathlib.Path(mounts["tls"]) / "tls.crt"
    assert loaded.tls_key == pathlib.Path(mounts["tls"]) / "tls.key"
    volumes = {item["name"]: item for item in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "kubefal-gateway-tls"
    assert loaded.kubeconfig is None  # the pod's ServiceAccount
    assert loaded.key_namespace == NAMESPACE
    gateway_env = plain_env(find(objects, "Deployment", "kubefal-gateway"))
    assert loaded.key_namespace == gateway_env["KUBEFAL_GATEWAY_KEY_NAMESPACE"]
    admin_port = gateway_env["KUBEFAL_GATEWAY_ADMIN_PORT"]
    assert loaded.gateway_admin_url == f"http://kubefal-gateway-admin.{NAMESPACE}.svc:{admin_port}"
    token = next(item for item in box["env"] if item["name"] == "KUBEFAL_GATEWAY_ADMIN_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {
        "name": "kubefal-gateway-admin-token",
        "key": "token",
    }
    assert loaded.gateway_rest_url == f"https://kubefal-gateway-rest.{NAMESPACE}.svc"
    assert loaded.gateway_rest_ca == pathlib.Path(mounts["tls"]) / "ca.crt"
    assert loaded.public_run_url == f"https://kubefal-gateway-run.{NAMESPACE}.svc"
    assert loaded.public_queue_url == f"https://kubefal-gateway-queue.{NAMESPACE}.svc"
    assert (loaded.max_workers, loaded.deploy_timeout, loaded.max_list_items) == (8, 900.0, 5000)
    assert (loaded.max_deploys, loaded.deploy_slots) == (2, 2)
    scaled = parse_settings(
        find(render({"controlPlane": {"maxDeploys": 5}}), "Deployment", "kubefal-controlplane"),
        monkeypatch,
    )
    assert scaled.max_deploys == 5
    for probe in ("readinessProbe", "livenessProbe"):
        assert box[probe]["tcpSocket"] == {"port": "grpc"}
    context = box["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert account == "kubefal-controlplane"
    assert (
        account
        != find(objects, "Deployment", "kubefal-gateway")["spec"]["template"]["spec"][
            "serviceAccountName"
        ]
    )


def test_the_service_and_network_policy_expose_only_the_grpc_port() -> None:
    objects = render({})
    deployment = find(objects, "Deployment", "kubefal-controlplane")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = find(objects, "Service", "kubefal-controlplane")
    [port] = service["spec"]["ports"]
    assert (port["port"], port["targetPort"], port["appProtocol"]) == (443, "grpc", "grpc")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    policy = find(objects, "NetworkPolicy", "kubefal-controlplane")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "grpc", "protocol": "TCP"}]}]
    # The gateway admits the control plane to its admin port (runner details), nobody else new.
    gateway_policy = find(objects, "NetworkPolicy", "kubefal-gateway")
    admin_peers = [
        peer["podSelector"]["matchLabels"]
        for rule in gateway_policy["spec"]["ingress"]
        if [port["port"] for port in rule["ports"]] == ["admin"]
        for peer in rule["from"]
    ]
    assert any(peer.items() <= pod_labels.items() for peer in admin_peers)


def test_the_control_plane_can_be_left_out() -> None:
    objects = render({"controlPlane": {"enabled": False}})
    assert not [
        item
        for item in objects
        if item["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "controlplane"
    ]
    gateway_policy = find(objects, "NetworkPolicy", "kubefal-gateway")
    [admin_rule] = [
        rule
        for rule in gateway_policy["spec"]["ingress"]
        if [port["port"] for port in rule["ports"]] == ["admin"]
    ]
    assert len(admin_rule["from"]) == 1  # the operator only


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {
        (group, resource, verb, ",".join(rule.get("resourceNames", [])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_control_plane_rbac_is_what_its_code_calls_and_the_gateway_gets_no_writes() -> None:
    objects = render({"gateway": {"apiKeys": {"namespace": "kubefal-keys"}}})
    role = find(objects, "ClusterRole", "kubefal-controlplane")
    assert _rules(role) == {
        *{
            ("kubefal.io", "falapps", verb, "")
            for verb in ("get", "list", "create", "update", "patch", "delete")
        },
        ("", "pods", "list", ""),
        ("", "pods", "delete", ""),
        ("", "pods/log", "get", ""),
        ("apps", "deployments", "patch", ""),
        *{("", "configmaps", verb, "") for verb in ("create", "patch", "list", "delete")},
        ("", "secrets", "get", "kubefal-secrets"),
        ("", "secrets", "update", "kubefal-secrets"),
        ("", "secrets", "create", ""),
        ("", "namespaces", "list", ""),
        ("", "events", "create", ""),
    }
    keys = find(objects, "Role", "kubefal-controlplane-api-keys")
    assert keys["metadata"]["namespace"] == "kubefal-keys"
    assert _rules(keys) == {
        ("", "secrets", verb, "") for verb in ("get", "list", "create", "patch")
    }
    for binding_kind, name in (
        ("ClusterRoleBinding", "kubefal-controlplane"),
        ("RoleBinding", "kubefal-controlplane-api-keys"),
    ):
        binding = find(objects, binding_kind, name)
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kubefal-controlplane", "namespace": NAMESPACE}
        ]
    gateway_verbs = {
        verb for _, _, verb, _ in _rules(find(objects, "ClusterRole", "kubefal-gateway"))
    }
    assert gateway_verbs <= {"get", "list", "watch"}


def test_the_values_schema_rejects_a_bad_control_plane_setting() -> None:
    completed = helm_template({"controlPlane": {"maxWorkers": 0}})
    assert completed.returncode != 0
    assert "/controlPlane/maxWorkers" in completed.stderr


@pytest.fixture
def chart_control_plane(
    tmp_path: pathlib.Path,
) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """The real control plane process with the Deployment's args and env and the generated
    certificate; only its address, port, file paths and a kubeconfig (of an API server that
    is never reached) are replaced."""
    objects = render({"controlPlane": {"publicHost": "api.kubefal.example"}})
    secret = find(objects, "Secret", "kubefal-gateway-tls")
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        ),
        encoding="utf-8",
    )
    deployment = find(objects, "Deployment", "kubefal-controlplane")
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KUBEFAL_")}
    environment.update(plain_env(deployment))
    environment.update(
        KUBEFAL_CONTROLPLANE_HOST="127.0.0.1",
        KUBEFAL_CONTROLPLANE_PORT=str(port),
        KUBEFAL_CONTROLPLANE_TLS_CERT=str(tmp_path / "tls.crt"),
        KUBEFAL_CONTROLPLANE_TLS_KEY=str(tmp_path / "tls.key"),
        KUBECONFIG=str(kubeconfig),
    )
    log = (tmp_path / "controlplane.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, *container(deployment)["command"][1:], *container(deployment)["args"]],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # Listening and verified under the Service's name first, so a refusal below is the
        # certificate's doing, not a server that is not up yet.
        credentials = grpc.ssl_channel_credentials((tmp_path / "ca.crt").read_bytes())
        service_name = f"kubefal-controlplane.{NAMESPACE}.svc"
        with grpc.secure_channel(
            f"127.0.0.1:{port}",
            credentials,
            options=[("grpc.ssl_target_name_override", service_name)],
        ) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        yield port, (tmp_path / "ca.crt").read_bytes(), secret
    finally:
        processes.stop(process)
        log.close()


@pytest.mark.parametrize(
    "name", [f"kubefal-controlplane.{NAMESPACE}.svc", "api.kubefal.example"], ids=["svc", "public"]
)
def test_a_grpc_client_trusting_the_chart_ca_reaches_the_real_control_plane(
    chart_control_plane: tuple[int, bytes, dict[str, Any]], name: str
) -> None:
    """What the fal CLI does with FAL_GRPC_HOST and GRPC_DEFAULT_SSL_ROOTS_FILE_PATH: a TLS
    (HTTP/2) channel verified against the chart's CA under the Service's (or the public) name.
    The call carries no key, so the control plane answers UNAUTHENTICATED: the handshake and
    the RPC went through."""
    port, ca, secret = chart_control_plane
    certificate = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
    assert name in names
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", name)]
    ) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = IsolateControllerStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as raised:
            stub.ListAliases(controller_pb2.ListAliasesRequest(), timeout=30)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED, raised.value.details()


def test_a_client_naming_a_host_outside_the_certificate_is_refused(
    chart_control_plane: tuple[int, bytes, dict[str, Any]],
) -> None:
    port, ca, _ = chart_control_plane
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(
        f"127.0.0.1:{port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "elsewhere.example")],
    ) as channel:
        stub = IsolateControllerStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as raised:
            stub.ListAliases(controller_pb2.ListAliasesRequest(), timeout=30, wait_for_ready=False)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
