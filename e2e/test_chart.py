"""The Helm chart (charts/kubefal) against the API server: what needs a cluster.

Platform teams install kubefal with this chart, so it is checked the way they use it: every
object of several value sets goes through the real API server (``kubectl apply
--dry-run=server``); the RBAC it grants is asked of the API server (``kubectl auth can-i``, and
dry-run writes as the operator's ServiceAccount); the real gateway, webhook, operator and control
plane start with the settings it passes; and ``helm install``/``upgrade``/``uninstall`` run
against the cluster. The checks that need only ``helm template`` are in
tests/chart/test_chart_template.py.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import json
import os
import pathlib
import re
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import yaml

from e2e import controlplane_harness
from e2e.conftest import ClusterHandle
from kubefal_api import naming
from testkit import processes, waiting
from testkit.ports import free_ports
from tests import charthelm

cp_tls = controlplane_harness.cp_tls


@pytest.fixture(scope="module")
def helm() -> charthelm.Helm:
    return charthelm.helm()


@pytest.fixture(scope="module")
def cluster_helm(cluster: ClusterHandle) -> charthelm.Helm:
    return charthelm.Helm(binary=cluster.testbin / "helm", kubeconfig=cluster.kubeconfig)


@pytest.fixture(scope="module")
def keda_crds(cluster: ClusterHandle) -> None:
    """KEDA's CRDs (from the KEDA module the testbin extracted), left installed: they are
    cluster-wide, identical for every test, and other tests may be using them."""
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=kubefal-e2e",
        "-f",
        str(cluster.testbin / "crds"),
    )
    waiting.wait_for(
        lambda: (
            cluster.kubectl(
                "get",
                "crd/scaledobjects.keda.sh",
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Established')].status}",
            )
            == "True"
        ),
        timeout=120,
        description="KEDA's ScaledObject CRD to be established",
    )


def test_notes_tell_how_to_create_a_key_and_configure_fal_client(
    cluster_helm: charthelm.Helm,
) -> None:
    release = f"kf-{uuid.uuid4().hex[:6]}"
    install = cluster_helm.run(
        "install",
        release,
        str(charthelm.CHART),
        "--namespace=platform",
        "--dry-run=client",
        "--set=crds.enabled=false",
    )
    assert install.returncode == 0, install.stderr
    notes = install.stdout.split("NOTES:", 1)[1]
    assert "kubefal keys create --namespace <app-namespace> --secret-namespace platform" in notes
    assert f"export FAL_RUN_HOST={release}-kubefal-gateway-run.platform.svc" in notes
    assert f"export FAL_QUEUE_RUN_HOST={release}-kubefal-gateway-queue.platform.svc" in notes
    assert "export SSL_CERT_FILE=" in notes
    assert f"export KUBEFAL_REST_HOST={release}-kubefal-gateway-rest.platform.svc" in notes
    assert f"export FAL_REST_HOST={release}-kubefal-gateway-rest.platform.svc" in notes
    assert f"export FAL_GRPC_HOST={release}-kubefal-controlplane.platform.svc" in notes
    assert "export GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=$PWD/kubefal-ca.pem" in notes


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


def test_the_real_gateway_starts_with_the_charts_settings_and_serves_its_certificate(
    helm: charthelm.Helm,
    cluster: ClusterHandle,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> None:
    """The gateway process runs here with the Deployment's environment; only what is
    pod-specific (bind address, ports, file paths, kubeconfig) is replaced. A client trusting
    the generated ca.crt (what SSL_CERT_FILE points at) verifies the queue, run and REST
    listeners under their Service names."""
    objects = helm.template({}, namespace="platform")
    secret = charthelm.find(objects, "Secret", "kubefal-gateway-tls")
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    container = charthelm.sole_container(charthelm.deployment(objects, "gateway"))
    assert container["command"] == ["python", "-m", "kubefal_gateway"]
    environment = charthelm.environment(container, namespace="platform")
    queue_port, run_port, admin_port, rest_port = free_ports(4)
    assert "KUBEFAL_GATEWAY_STORAGE_SIGNING_KEY" in environment  # a Secret's, stubbed here
    environment.update(
        KUBEFAL_GATEWAY_HOST="127.0.0.1",
        KUBEFAL_GATEWAY_QUEUE_PORT=str(queue_port),
        KUBEFAL_GATEWAY_RUN_PORT=str(run_port),
        KUBEFAL_GATEWAY_ADMIN_PORT=str(admin_port),
        KUBEFAL_GATEWAY_REST_PORT=str(rest_port),
        KUBEFAL_GATEWAY_STORAGE=str(tmp_path / "files"),
        KUBEFAL_GATEWAY_STORAGE_SIGNING_KEY=uuid.uuid4().hex,
        KUBEFAL_GATEWAY_TLS_CERT=str(tmp_path / "tls.crt"),
        KUBEFAL_GATEWAY_TLS_KEY=str(tmp_path / "tls.key"),
        KUBEFAL_GATEWAY_STORE=f"sqlite://{tmp_path}/queue.db",
        KUBEFAL_GATEWAY_KUBECONFIG=str(cluster.kubeconfig),
    )
    log_path = tmp_path / "gateway.log"
    e2e_logs.append(log_path)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("KUBEFAL_")}
    with log_path.open("wb") as log:
        gateway = subprocess.Popen(
            [sys.executable, *container["command"][1:], *container.get("args", [])],
            env={**inherited, **environment},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        waiting.wait_for(
            lambda: gateway.poll() is not None or _ready(f"http://127.0.0.1:{admin_port}/readyz"),
            timeout=120,
            description="the gateway's /readyz",
        )
        assert gateway.poll() is None, log_path.read_text(errors="replace")
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        for port, service in [
            (queue_port, "kubefal-gateway-queue"),
            (run_port, "kubefal-gateway-run"),
            (rest_port, "kubefal-gateway-rest"),
        ]:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname=f"{service}.platform.svc") as tls,
            ):
                assert tls.version() in {"TLSv1.2", "TLSv1.3"}
    finally:
        processes.stop(gateway)


def _ready_over_tls(url: str, *, context: ssl.SSLContext) -> bool:
    try:
        return httpx.get(url, timeout=2.0, verify=context).status_code == 200
    except httpx.TransportError:
        return False


def test_the_real_webhook_starts_with_the_charts_settings_and_serves_its_certificate(
    helm: charthelm.Helm,
    cluster: ClusterHandle,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> None:
    """The webhook process runs here with the Deployment's environment (only its addresses,
    ports, certificate paths and kubeconfig replaced) and the generated certificate; a client
    trusting the ValidatingWebhookConfiguration's caBundle verifies it under the Service's
    name, as the API server does, its readiness probe path answers, and its metrics port
    serves /metrics."""
    objects = helm.template({}, namespace="platform")
    secret = charthelm.find(objects, "Secret", "kubefal-webhook-tls")
    for key in ("tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    [webhook] = charthelm.find(objects, "ValidatingWebhookConfiguration")["webhooks"]
    (tmp_path / "ca.crt").write_bytes(base64.b64decode(webhook["clientConfig"]["caBundle"]))
    container = charthelm.sole_container(charthelm.deployment(objects, "webhook"))
    environment = charthelm.environment(container, namespace="platform")
    assert environment["KUBEFAL_WEBHOOK_METRICS_PORT"] == "9090"
    port, metrics_port = free_ports(2)
    environment.update(
        KUBEFAL_WEBHOOK_HOST="127.0.0.1",
        KUBEFAL_WEBHOOK_PORT=str(port),
        KUBEFAL_WEBHOOK_METRICS_HOST="127.0.0.1",
        KUBEFAL_WEBHOOK_METRICS_PORT=str(metrics_port),
        KUBEFAL_WEBHOOK_TLS_CERT=str(tmp_path / "tls.crt"),
        KUBEFAL_WEBHOOK_TLS_KEY=str(tmp_path / "tls.key"),
        KUBEFAL_WEBHOOK_KUBECONFIG=str(cluster.kubeconfig),
    )
    log_path = tmp_path / "webhook.log"
    e2e_logs.append(log_path)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("KUBEFAL_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, *container["command"][1:]],
            env={**inherited, **environment},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # The probe path over TLS without verification first: readiness, not trust, is awaited.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        probe = container["readinessProbe"]["httpGet"]
        waiting.wait_for(
            lambda: (
                process.poll() is not None
                or _ready_over_tls(f"https://127.0.0.1:{port}{probe['path']}", context=insecure)
            ),
            timeout=120,
            description="the webhook's /readyz",
        )
        assert process.poll() is None, log_path.read_text(errors="replace")
        service = webhook["clientConfig"]["service"]
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(
                raw, server_hostname=f"{service['name']}.{service['namespace']}.svc"
            ) as tls,
        ):
            assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        # The metrics listener the chart turns on serves plain-HTTP Prometheus text.
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert scrape.status_code == 200
        assert "kubefal_webhook_admission_reviews_total" in scrape.text
    finally:
        processes.stop(process)


def test_the_real_operator_starts_with_the_charts_settings_and_machine_catalogue(
    helm: charthelm.Helm,
    cluster: ClusterHandle,
    namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> None:
    """The operator process runs here with the Deployment's arguments and environment,
    scoped to this test's namespace (operator.watchNamespaces), against the catalogue
    ConfigMap the chart renders; only its listening ports are replaced. kopf's liveness
    endpoint answers once the catalogue is loaded and the handlers run."""
    objects = helm.template({"operator": {"watchNamespaces": [namespace]}}, namespace=namespace)
    config_map = charthelm.find(objects, "ConfigMap")
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(config_map))
    container = charthelm.sole_container(charthelm.deployment(objects, "operator"))
    assert container["command"] == ["python", "-m", "kubefal_operator"]
    assert container["args"] == [f"--namespace={namespace}"]
    environment = charthelm.environment(container, namespace=namespace)
    health_port, metrics_port = free_ports(2)
    environment.update(
        KUBEFAL_OPERATOR_LIVENESS=f"http://127.0.0.1:{health_port}/healthz",
        KUBEFAL_OPERATOR_METRICS_HOST="127.0.0.1",
        KUBEFAL_OPERATOR_METRICS_PORT=str(metrics_port),
    )
    log_path = tmp_path / "operator.log"
    e2e_logs.append(log_path)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("KUBEFAL_")}
    with log_path.open("wb") as log:
        operator = subprocess.Popen(
            [sys.executable, *container["command"][1:], *container["args"]],
            env={**inherited, **environment, "KUBECONFIG": str(cluster.kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        waiting.wait_for(
            lambda: (
                operator.poll() is not None or _ready(f"http://127.0.0.1:{health_port}/healthz")
            ),
            timeout=120,
            description="the operator's /healthz",
        )
        assert operator.poll() is None, log_path.read_text(errors="replace")
        probe = httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=10).json()
        assert probe["catalogue"] == f"{namespace}/{config_map['metadata']['name']}"
        assert _ready(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        processes.stop(operator)


def _service_account_kubeconfig(
    cluster: ClusterHandle, *, namespace: str, service_account: str, path: pathlib.Path
) -> pathlib.Path:
    """A kubeconfig that authenticates as ``service_account`` with a short-lived token."""
    token = cluster.kubectl(
        "create", "token", service_account, f"--namespace={namespace}", "--duration=1h"
    ).strip()
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text(encoding="utf-8"))
    context = next(
        item for item in kubeconfig["contexts"] if item["name"] == kubeconfig["current-context"]
    )
    kubeconfig["users"] = [{"name": context["context"]["user"], "user": {"token": token}}]
    path.write_text(yaml.safe_dump(kubeconfig), encoding="utf-8")
    return path


PERMISSION_ERRORS = re.compile(r"Forbidden|forbidden|Not enough permissions|\b403\b")


def test_the_real_operator_reconciles_as_its_service_account_without_permission_errors(
    cluster: ClusterHandle,
    namespace: str,
    falapp_crd: dict[str, Any],
    keda_crds: None,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> None:
    """The operator runs with the chart's RBAC only (a token of its ServiceAccount), scoped
    to this namespace: it creates a FalApp's children and kopf's watches of every resource
    it uses (ScaledObjects and HPAs included, with both actuators off) raise no 403."""
    del falapp_crd  # installed for the FalApp below
    release = f"kf-{uuid.uuid4().hex[:6]}"
    values = {"operator": {"watchNamespaces": [namespace]}}
    objects = charthelm.Helm(binary=cluster.testbin / "helm").template(
        values, namespace=namespace, release=release
    )
    cluster.kubectl(
        "apply", "-f", "-", input_text=yaml.safe_dump(charthelm.find(objects, "ConfigMap"))
    )
    container = charthelm.sole_container(charthelm.deployment(objects, "operator"))
    environment = charthelm.environment(container, namespace=namespace)
    health_port, metrics_port = free_ports(2)
    environment.update(
        KUBEFAL_OPERATOR_LIVENESS=f"http://127.0.0.1:{health_port}/healthz",
        KUBEFAL_OPERATOR_METRICS_HOST="127.0.0.1",
        KUBEFAL_OPERATOR_METRICS_PORT=str(metrics_port),
    )
    del environment["KUBEFAL_GATEWAY_ADMIN_URL"]  # no gateway runs here
    log_path = tmp_path / "operator.log"
    e2e_logs.append(log_path)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("KUBEFAL_")}
    with _applied_rbac(cluster, namespace, values, release=release) as accounts:
        kubeconfig = _service_account_kubeconfig(
            cluster,
            namespace=namespace,
            service_account=accounts.operator.rsplit(":", 1)[1],
            path=tmp_path / "operator.kubeconfig",
        )
        with log_path.open("wb") as log:
            operator = subprocess.Popen(
                [sys.executable, *container["command"][1:], *container["args"]],
                env={**inherited, **environment, "KUBECONFIG": str(kubeconfig)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            falapp = {
                "apiVersion": "kubefal.io/v1alpha1",
                "kind": "FalApp",
                "metadata": {"name": "rbac-probe", "namespace": namespace},
                "spec": {"app": "app.py::MyApp", "image": "registry.example/app:1"},
            }
            cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(falapp))
            deployment = naming.deployment_name("rbac-probe")
            waiting.wait_for(
                lambda: (
                    operator.poll() is not None
                    or bool(
                        cluster.kubectl(
                            "get",
                            "deployment",
                            deployment,
                            f"--namespace={namespace}",
                            "--ignore-not-found",
                            "-o",
                            "name",
                        )
                    )
                ),
                timeout=120,
                description="the operator to create the FalApp's Deployment",
            )
            assert operator.poll() is None, log_path.read_text(errors="replace")
        finally:
            processes.stop(operator)
    log_text = log_path.read_text(errors="replace")
    assert not PERMISSION_ERRORS.search(log_text), log_text


def test_the_real_control_plane_serves_the_fal_cli_as_its_service_account(
    cluster: ClusterHandle,
    namespace: str,
    api_client: Any,
    falapp_crd: dict[str, Any],
    cp_tls: Any,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> None:
    """The control plane runs with the chart's RBAC only (a token of its ServiceAccount) and
    the Deployment's arguments; the unmodified fal CLI lists, scales and deletes an app, lists
    its runners and stops one, sets and lists secrets (also with a key valid in every
    namespace), and creates and lists keys: every call succeeds and no 403 is logged."""
    del falapp_crd  # installed for the FalApp below
    release = f"kf-{uuid.uuid4().hex[:6]}"
    objects = charthelm.Helm(binary=cluster.testbin / "helm").template(
        {}, namespace=namespace, release=release
    )
    arguments = tuple(
        charthelm.sole_container(charthelm.deployment(objects, "controlplane"))["args"]
    )
    app_namespace = f"{namespace}-apps"
    log_path = tmp_path / "controlplane.log"
    e2e_logs.append(log_path)
    cluster.kubectl("create", "namespace", app_namespace)
    try:
        with _applied_rbac(cluster, namespace, {}, release=release) as accounts:
            kubeconfig = _service_account_kubeconfig(
                cluster,
                namespace=namespace,
                service_account=accounts.controlplane.rsplit(":", 1)[1],
                path=tmp_path / "controlplane.kubeconfig",
            )
            plane = controlplane_harness.ControlPlaneProcess(
                kubeconfig=kubeconfig,
                tls=cp_tls,
                key_namespace=namespace,
                log_path=log_path,
                arguments=arguments,
            ).start()
            try:
                controlplane_harness.create_falapp(
                    api_client, namespace=app_namespace, name="rbac-app"
                )
                controlplane_harness.create_runner_pod(
                    api_client, namespace=app_namespace, app="rbac-app", pod="rbac-app-0"
                )
                key = controlplane_harness.create_key(
                    api_client, key_namespace=namespace, namespaces=[app_namespace]
                )
                everywhere = controlplane_harness.create_key(
                    api_client, key_namespace=namespace, namespaces=["*"]
                )
                app = f"{app_namespace}/rbac-app"

                def fal(*args: str, as_key: Any = key) -> str:
                    result = controlplane_harness.run_fal(plane, *args, key=as_key, home=tmp_path)
                    assert result.returncode == 0, (args, result.stdout + result.stderr)
                    return result.stdout

                assert app in fal("apps", "list")
                fal("apps", "scale", app, "--keep-alive", "45")
                assert "rbac-app-0" in fal("apps", "runners", app, "--state", "all")
                fal("secrets", "set", "RBAC_A=1")
                fal("secrets", "set", "RBAC_B=2")  # the second write updates kubefal-secrets
                assert "RBAC_B" in fal("secrets", "list", as_key=everywhere)
                created = fal("keys", "create", "--scope", "ADMIN", "--desc", "rbac")
                assert "FAL_KEY=" in created
                assert "rbac" in fal("keys", "list")
                fal("runners", "stop", "rbac-app-0")
                fal("apps", "delete", app)
                falapp = cluster.kubectl(
                    "get",
                    "falapp",
                    "rbac-app",
                    f"--namespace={app_namespace}",
                    "--ignore-not-found",
                    "-o",
                    "name",
                )
                assert falapp == ""
                events = cluster.kubectl(
                    "get", "events", f"--namespace={app_namespace}", "-o", "json"
                )
                reasons = {
                    item["reason"]
                    for item in json.loads(events)["items"]
                    if item.get("source", {}).get("component") == "kubefal-controlplane"
                }
                assert {"SecretSet"} <= reasons, reasons
            finally:
                plane.stop()
    finally:
        cluster.kubectl("delete", "namespace", app_namespace, "--wait=false", check=False)
    log_text = log_path.read_text(errors="replace")
    assert not PERMISSION_ERRORS.search(log_text), log_text


# --- against the API server -----------------------------------------------------------------


@pytest.mark.parametrize("value_set", sorted(charthelm.VALUE_SETS))
def test_every_rendered_object_is_accepted_by_the_api_server(
    helm: charthelm.Helm, cluster: ClusterHandle, namespace: str, keda_crds: None, value_set: str
) -> None:
    release = f"kf-{uuid.uuid4().hex[:6]}"
    values = copy.deepcopy(charthelm.VALUE_SETS[value_set])
    if values.get("operator", {}).get("watchNamespaces"):
        # Its per-namespace Roles go into namespaces that must exist: this test's.
        values["operator"]["watchNamespaces"] = [namespace]
    manifest = helm.template_text(values, namespace=namespace, release=release)
    objects = [document for document in yaml.safe_load_all(manifest) if document]
    output = cluster.kubectl(
        "apply", "--dry-run=server", f"--namespace={namespace}", "-f", "-", input_text=manifest
    )
    accepted = [line for line in output.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(objects), output


_SUBRESOURCES = frozenset({"status", "scale", "log", "exec", "eviction"})


def _can(cluster: ClusterHandle, verb: str, resource: str, *, who: str, namespace: str) -> bool:
    """``resource`` is ``kind``, ``kind/name`` or ``kind/<subresource>`` (``falapps.kubefal.io/
    status``): kubectl reads ``kind/status`` as an object named status, so a subresource goes
    to ``--subresource``."""
    kind, _, rest = resource.partition("/")
    target = [kind, f"--subresource={rest}"] if rest in _SUBRESOURCES else [resource]
    answer = cluster.kubectl(
        "auth", "can-i", verb, *target, f"--namespace={namespace}", f"--as={who}", check=False
    )
    return answer.strip() == "yes"


@dataclasses.dataclass(frozen=True)
class Accounts:
    """User names of the chart's ServiceAccounts, and a namespace that is not the release's."""

    operator: str
    gateway: str
    webhook: str
    controlplane: str
    other_namespace: str


@contextlib.contextmanager
def _applied_rbac(
    cluster: ClusterHandle, namespace: str, values: dict[str, Any], *, release: str = ""
) -> Iterator[Accounts]:
    """The chart's ServiceAccounts and RBAC for ``values`` applied for real; the
    cluster-scoped objects are deleted afterwards (the namespaces take the rest)."""
    release = release or f"kf-{uuid.uuid4().hex[:6]}"
    objects = charthelm.Helm(binary=cluster.testbin / "helm").template(
        values, namespace=namespace, release=release
    )
    rbac_kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    selected = [item for item in objects if item["kind"] in rbac_kinds]
    other = f"{namespace}-{release}"
    try:
        cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(selected))
        cluster.kubectl("create", "namespace", other)
        user = f"system:serviceaccount:{namespace}:{release}-kubefal"
        yield Accounts(
            operator=f"{user}-operator",
            gateway=f"{user}-gateway",
            webhook=f"{user}-webhook",
            controlplane=f"{user}-controlplane",
            other_namespace=other,
        )
    finally:
        cluster.kubectl(
            "delete",
            "clusterrole,clusterrolebinding",
            "-l",
            f"app.kubernetes.io/instance={release}",
            "--ignore-not-found",
            check=False,
        )
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


@pytest.fixture
def installed_rbac(cluster: ClusterHandle, namespace: str) -> Iterator[Accounts]:
    """The RBAC of a release with both the keda and the hpa actuator on."""
    values = {"keda": {"enabled": True}, "externalMetrics": {"enabled": True}}
    with _applied_rbac(cluster, namespace, values) as accounts:
        yield accounts


def _wrong_grants(
    cluster: ClusterHandle,
    *,
    who: str,
    label: str,
    namespace: str,
    allowed: list[tuple[str, str]],
    denied: list[tuple[str, str]],
) -> list[str]:
    wrong = [
        f"{label} may not {verb} {resource} in {namespace}"
        for verb, resource in allowed
        if not _can(cluster, verb, resource, who=who, namespace=namespace)
    ]
    wrong += [
        f"{label} may {verb} {resource} in {namespace}"
        for verb, resource in denied
        if _can(cluster, verb, resource, who=who, namespace=namespace)
    ]
    return wrong


def test_rbac_grants_each_process_what_it_uses_and_nothing_more(
    cluster: ClusterHandle,
    namespace: str,
    falapp_crd: dict[str, Any],
    keda_crds: None,
    installed_rbac: Accounts,
) -> None:
    other = installed_rbac.other_namespace
    operator_may = [
        ("get", "falapps.kubefal.io"),
        ("watch", "falapps.kubefal.io"),
        ("patch", "falapps.kubefal.io/status"),
        ("create", "deployments.apps"),
        ("patch", "deployments.apps"),
        ("delete", "services"),
        ("create", "networkpolicies.networking.k8s.io"),
        ("patch", "poddisruptionbudgets.policy"),
        ("watch", "pods"),
        ("patch", "pods"),
        ("list", "nodes"),
        ("get", "configmaps"),
        ("watch", "configmaps"),
        ("create", "events"),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
        ("watch", "scaledobjects.keda.sh"),
        ("create", "scaledobjects.keda.sh"),
        ("delete", "scaledobjects.keda.sh"),
        ("list", "horizontalpodautoscalers.autoscaling"),
        ("patch", "horizontalpodautoscalers.autoscaling"),
        ("delete", "horizontalpodautoscalers.autoscaling"),
        # each app's runner key (<app>-fal-key): by name only, never listed or watched
        ("get", "secrets"),
        ("create", "secrets"),
        ("patch", "secrets"),
        ("delete", "secrets"),
    ]
    operator_may_not = [
        ("list", "secrets"),
        ("watch", "secrets"),
        ("update", "secrets"),
        ("create", "pods"),
        ("delete", "pods"),
        ("update", "pods"),
        ("update", "deployments.apps"),
        ("update", "falapps.kubefal.io"),
        ("patch", "falapps.kubefal.io"),  # only its status (no kopf annotations)
        ("create", "configmaps"),
        ("delete", "falapps.kubefal.io"),
        ("patch", "events"),
        ("patch", "nodes"),
        ("list", "namespaces"),  # only with operator.watchNamespaces
        ("create", "clusterroles.rbac.authorization.k8s.io"),
    ]
    gateway_may = [
        ("watch", "falapps.kubefal.io"),
        ("watch", "pods"),
        ("watch", "replicasets.apps"),
    ]
    gateway_may_not = [
        ("list", "secrets"),
        ("patch", "falapps.kubefal.io"),
        ("create", "pods"),
    ]
    webhook_may = [("get", "configmaps"), ("get", "secrets"), ("list", "nodes")]
    webhook_may_not = [
        ("list", "secrets"),
        ("watch", "secrets"),
        ("list", "configmaps"),
        ("patch", "configmaps"),
        ("get", "pods"),
        ("patch", "falapps.kubefal.io"),
        ("watch", "nodes"),
    ]
    wrong = _wrong_grants(
        cluster,
        who=installed_rbac.operator,
        label="operator",
        namespace=other,
        allowed=operator_may,
        denied=operator_may_not,
    )
    wrong += _wrong_grants(
        cluster,
        who=installed_rbac.gateway,
        label="gateway",
        namespace=other,
        allowed=gateway_may,
        denied=gateway_may_not,
    )
    wrong += _wrong_grants(
        cluster,
        who=installed_rbac.gateway,
        label="gateway",
        namespace=namespace,
        allowed=[("list", "secrets"), ("watch", "secrets")],
        denied=[("get", "configmaps")],
    )
    wrong += _wrong_grants(
        cluster,
        who=installed_rbac.webhook,
        label="webhook",
        namespace=other,
        allowed=webhook_may,
        denied=webhook_may_not,
    )
    assert not wrong, "\n".join(wrong)


def test_the_control_plane_may_write_what_the_fal_cli_changes_and_the_gateway_may_not(
    cluster: ClusterHandle,
    namespace: str,
    falapp_crd: dict[str, Any],
    installed_rbac: Accounts,
) -> None:
    """The control plane's ServiceAccount may do what kubefal_controlplane calls (cluster.py's
    list) in any app namespace, key Secrets only in the key namespace (the release's here),
    Secrets of apps only by the name kubefal-secrets; the gateway gets none of these writes."""
    del falapp_crd  # its resource must exist for can-i to resolve it
    other = installed_rbac.other_namespace
    controlplane_may = [
        *[
            (verb, "falapps.kubefal.io")
            for verb in ("get", "list", "create", "update", "patch", "delete")
        ],
        ("list", "pods"),
        ("delete", "pods"),
        ("patch", "deployments.apps"),
        *[(verb, "configmaps") for verb in ("create", "patch", "list", "delete")],
        ("get", "secrets/kubefal-secrets"),
        ("update", "secrets/kubefal-secrets"),
        ("create", "secrets"),
        ("create", "events"),
        ("list", "namespaces"),
    ]
    controlplane_may_not = [
        ("get", "secrets"),
        ("get", "secrets/some-other-secret"),
        ("list", "secrets"),
        ("watch", "secrets"),
        ("delete", "secrets/kubefal-secrets"),
        ("watch", "falapps.kubefal.io"),
        ("create", "pods"),
        ("patch", "pods"),
        ("get", "pods"),
        ("update", "deployments.apps"),
        ("delete", "deployments.apps"),
        ("get", "configmaps"),
        ("list", "nodes"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
    ]
    wrong = _wrong_grants(
        cluster,
        who=installed_rbac.controlplane,
        label="control plane",
        namespace=other,
        allowed=controlplane_may,
        denied=controlplane_may_not,
    )
    wrong += _wrong_grants(
        cluster,
        who=installed_rbac.controlplane,
        label="control plane",
        namespace=namespace,  # the key namespace
        allowed=[
            ("get", "secrets"),
            ("list", "secrets"),
            ("create", "secrets"),
            ("patch", "secrets"),
        ],
        denied=[("delete", "secrets"), ("watch", "secrets"), ("update", "secrets")],
    )
    wrong += _wrong_grants(
        cluster,
        who=installed_rbac.gateway,
        label="gateway",
        namespace=other,
        allowed=[],
        denied=[
            ("create", "falapps.kubefal.io"),
            ("update", "falapps.kubefal.io"),
            ("delete", "falapps.kubefal.io"),
            ("delete", "pods"),
            ("patch", "deployments.apps"),
            ("create", "configmaps"),
            ("create", "secrets"),
            ("update", "secrets/kubefal-secrets"),
            ("create", "events"),
        ],
    )
    assert not wrong, "\n".join(wrong)


def test_a_scoped_operator_may_patch_pods_only_in_the_namespaces_it_serves(
    cluster: ClusterHandle, namespace: str
) -> None:
    values = {"operator": {"watchNamespaces": [namespace]}}
    with _applied_rbac(cluster, namespace, values) as accounts:
        verbs = [("list", "pods"), ("watch", "pods"), ("patch", "pods")]
        wrong = _wrong_grants(
            cluster,
            who=accounts.operator,
            label="operator",
            namespace=namespace,
            allowed=verbs,
            denied=[("delete", "pods"), ("create", "pods")],
        )
        wrong += _wrong_grants(
            cluster,
            who=accounts.operator,
            label="operator",
            namespace=accounts.other_namespace,
            allowed=[],
            denied=verbs,
        )
    assert not wrong, "\n".join(wrong)


def test_without_their_actuators_the_operator_only_watches_scaler_objects(
    cluster: ClusterHandle, namespace: str, keda_crds: None
) -> None:
    with _applied_rbac(cluster, namespace, {}) as accounts:
        wrong = _wrong_grants(
            cluster,
            who=accounts.operator,
            label="operator",
            namespace=accounts.other_namespace,
            allowed=[
                ("list", "scaledobjects.keda.sh"),
                ("watch", "scaledobjects.keda.sh"),
                ("list", "horizontalpodautoscalers.autoscaling"),
                ("watch", "horizontalpodautoscalers.autoscaling"),
            ],
            denied=[
                (verb, resource)
                for verb in ("create", "patch", "delete")
                for resource in ("scaledobjects.keda.sh", "horizontalpodautoscalers.autoscaling")
            ],
        )
    assert not wrong, "\n".join(wrong)


def _scaled_object(*, namespace: str, gateway_namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "my-app", "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"name": "my-app"},
            "minReplicaCount": 0,
            "maxReplicaCount": 5,
            "triggers": [
                {
                    "type": "external-push",
                    "metadata": {
                        "scalerAddress": f"kubefal-gateway-admin.{gateway_namespace}.svc:9091",
                        "app": f"{namespace}/my-app",
                    },
                }
            ],
        },
    }


def _horizontal_pod_autoscaler(*, namespace: str, gateway_namespace: str) -> dict[str, Any]:
    del gateway_namespace  # the HPA reaches the gateway through the APIService
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "my-app", "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "my-app"},
            "minReplicas": 1,
            "maxReplicas": 5,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": "kubefal-desired-runners",
                            "selector": {"matchLabels": {naming.LABEL_APP: "my-app"}},
                        },
                        "target": {"type": "AverageValue", "averageValue": "1"},
                    },
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("render", "created"),
    [
        (_scaled_object, "scaledobject.keda.sh/my-app serverside-applied (server dry run)"),
        (
            _horizontal_pod_autoscaler,
            "horizontalpodautoscaler.autoscaling/my-app serverside-applied (server dry run)",
        ),
    ],
    ids=["keda-scaledobject", "hpa"],
)
def test_the_operator_may_write_the_scaler_objects_of_its_actuators(
    cluster: ClusterHandle,
    namespace: str,
    keda_crds: None,
    installed_rbac: Accounts,
    render: Callable[..., dict[str, Any]],
    created: str,
) -> None:
    """Written the way the operator writes them: server-side apply as its field manager
    (an apply that creates needs create and patch, never get or update)."""
    manifest = render(namespace=installed_rbac.other_namespace, gateway_namespace=namespace)
    output = cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=kubefal-operator",
        "--force-conflicts",
        "--dry-run=server",
        f"--as={installed_rbac.operator}",
        "-f",
        "-",
        input_text=yaml.safe_dump(manifest),
    )
    assert created in output


def test_helm_install_upgrade_and_uninstall_keep_the_ca_and_the_queue(
    cluster_helm: charthelm.Helm, cluster: ClusterHandle, namespace: str
) -> None:
    release = f"kf-{uuid.uuid4().hex[:6]}"
    # The webhook's failurePolicy is Fail and no webhook pod serves here: it must review
    # FalApps of this test's namespace only, not those of tests running alongside.
    install = cluster_helm.run(
        "install",
        release,
        str(charthelm.CHART),
        f"--namespace={namespace}",
        "--set=crds.enabled=false",
        values={
            "webhook": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            }
        },
    )
    assert install.returncode == 0, install.stderr
    try:
        tls_secret = f"{release}-kubefal-gateway-tls"
        signing_secret = f"{release}-kubefal-gateway-webhook-signing"
        webhook_secret = f"{release}-kubefal-webhook-tls"

        def secret_data(name: str) -> dict[str, str]:
            document = json.loads(
                cluster.kubectl("get", "secret", name, f"--namespace={namespace}", "-o", "json")
            )
            data: dict[str, str] = document["data"]
            return data

        storage_secret = f"{release}-kubefal-gateway-storage-signing"
        before_tls, before_signing = secret_data(tls_secret), secret_data(signing_secret)
        before_webhook = secret_data(webhook_secret)
        before_storage = secret_data(storage_secret)
        configuration = json.loads(
            cluster.kubectl(
                "get", "validatingwebhookconfiguration", f"{release}-kubefal-webhook", "-o", "json"
            )
        )
        assert configuration["webhooks"][0]["clientConfig"]["caBundle"] == before_webhook["ca.crt"]
        upgrade = cluster_helm.run(
            "upgrade",
            release,
            str(charthelm.CHART),
            f"--namespace={namespace}",
            "--reuse-values",
            "--set=gateway.logLevel=debug",
        )
        assert upgrade.returncode == 0, upgrade.stderr
        assert secret_data(tls_secret) == before_tls, "an upgrade rotated the generated CA"
        assert secret_data(signing_secret) == before_signing, "an upgrade changed the signing key"
        assert secret_data(webhook_secret) == before_webhook, "an upgrade rotated the webhook CA"
        assert secret_data(storage_secret) == before_storage, "an upgrade changed the URL key"
        changed_names = cluster_helm.run(
            "upgrade",
            release,
            str(charthelm.CHART),
            f"--namespace={namespace}",
            "--reuse-values",
            "--set=gateway.tls.extraDnsNames[0]=kubefal.example",
        )
        assert changed_names.returncode == 0, changed_names.stderr
        assert secret_data(tls_secret)["tls.crt"] != before_tls["tls.crt"]
    finally:
        uninstall = cluster_helm.run("uninstall", release, f"--namespace={namespace}", "--wait")
    assert uninstall.returncode == 0, uninstall.stderr
    left = cluster.kubectl(
        "get",
        "pvc,deploy,clusterrole,validatingwebhookconfiguration",
        "--all-namespaces",
        "-l",
        f"app.kubernetes.io/instance={release}",
        "-o",
        "name",
    ).split()
    assert sorted(left) == [
        f"persistentvolumeclaim/{release}-kubefal-gateway-files",
        f"persistentvolumeclaim/{release}-kubefal-gateway-queue",
    ]
