"""The Helm chart (charts/kubefal) renders what the processes and the API server expect.

Platform teams install kubefal with this chart, so it is checked the way they use it: the
real ``helm`` binary lints and renders it; every object of several value sets goes through
the real API server (``kubectl apply --dry-run=server``); the RBAC it grants is asked of
the API server (``kubectl auth can-i``, and dry-run writes as the operator's
ServiceAccount); the settings it passes are parsed by the operator's and the gateway's own
settings code; and ``helm install``/``upgrade``/``uninstall`` run against the cluster.

Contracts with other parts of the repository are checked here too: the chart's CRD is the
generated one in crds/, the default machine catalogue equals ``kubefal_api.machines``, and
gateway pods carry the labels the runners' NetworkPolicy admits.
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
from cryptography import x509

from e2e import cluster as local_cluster
from e2e import controlplane_harness
from e2e.conftest import ClusterHandle
from kubefal_api import crds, machines, naming
from kubefal_gateway import settings as gateway_settings
from kubefal_operator import config as operator_config
from kubefal_operator import handlers as operator_handlers
from kubefal_webhook import settings as webhook_settings
from testkit import waiting
from testkit.ports import free_ports

REPO_ROOT = local_cluster.REPO_ROOT
cp_tls = controlplane_harness.cp_tls
CHART = REPO_ROOT / "charts" / "kubefal"
GENERATED_CRD = REPO_ROOT / "crds" / crds.CRD_FILENAME
CHART_CRD_COPY = CHART / "files" / "crds" / crds.CRD_FILENAME
SYNC_CRD_COMMAND = f"make manifests && cp crds/{crds.CRD_FILENAME} charts/kubefal/files/crds/"

REDIS_VALUES: dict[str, Any] = {
    "gateway": {
        "replicas": 3,
        "store": {"type": "redis", "redis": {"url": "redis://kubefal-redis:6379/0"}},
        # Every replica must see every uploaded file: S3, not a volume of one pod.
        "storage": {
            "type": "s3",
            "s3": {
                "bucket": "kubefal-files",
                "endpoint": "http://minio.storage.svc:9000",
                "existingSecret": "kubefal-s3",
            },
        },
    }
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "replicas-3-redis": REDIS_VALUES,
    "scaler-hpa": {"externalMetrics": {"enabled": True}},
    "scaler-keda": {"keda": {"enabled": True}},
    "crds-disabled": {"crds": {"enabled": False}},
    "controlplane-and-rest-disabled": {
        "controlPlane": {"enabled": False},
        "gateway": {"rest": {"enabled": False}},
    },
    "controlplane-storage-data": {
        "controlPlane": {
            "replicas": 2,
            "publicHost": "api.kubefal.example",
            "service": {"type": "LoadBalancer"},
            "networkPolicy": {
                "from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
            },
        },
        "gateway": {
            "publicHosts": {"rest": "rest.kubefal.example"},
            "networkPolicy": {
                "restFrom": [{"namespaceSelector": {"matchLabels": {"kubefal.io/apps": "true"}}}]
            },
            "storage": {"embedded": {"persistence": {"size": "50Gi"}}},
        },
        "persistentData": {
            "volume": {"nfs": {"server": "nfs.storage.example", "path": "/exports/kubefal"}}
        },
    },
    "webhook-disabled": {"webhook": {"enabled": False}},
    "hardened-extras": {
        "gateway": {
            "networkPolicy": {
                "enabled": True,
                "adminFrom": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
                ],
            },
            "publicHosts": {"run": "run.kubefal.example", "queue": "queue.kubefal.example"},
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                }
            ],
            "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
        },
        "operator": {"watchNamespaces": ["team-a", "team-b"], "logLevel": "debug"},
        "keda": {"enabled": True},
        "externalMetrics": {"enabled": True},
        "webhook": {
            "replicas": 3,
            "podDisruptionBudget": {"minAvailable": 2},
            "namespaceSelector": {"matchLabels": {"kubefal.io/apps": "true"}},
            "priorityClassName": "system-cluster-critical",
        },
    },
}


def _kubernetes_version() -> str:
    text = (REPO_ROOT / "e2e" / "versions.env").read_text(encoding="utf-8")
    match = re.search(r"^K8S_VERSION=(\S+)$", text, flags=re.MULTILINE)
    if match is None:
        raise AssertionError("e2e/versions.env has no K8S_VERSION")
    return match.group(1)


@dataclasses.dataclass(frozen=True)
class Helm:
    """The testbin's helm binary, run against the chart."""

    binary: pathlib.Path
    kubeconfig: pathlib.Path | None = None

    def run(
        self, *args: str, values: dict[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.binary), *args]
        if self.kubeconfig is not None:
            command.append(f"--kubeconfig={self.kubeconfig}")
        if values is not None:
            command += ["--values", "-"]
        return subprocess.run(
            command,
            input=None if values is None else yaml.safe_dump(values),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def template_text(
        self, values: dict[str, Any], *, namespace: str = "kubefal-system", release: str = "kubefal"
    ) -> str:
        result = self.run(
            "template",
            release,
            str(CHART),
            f"--namespace={namespace}",
            f"--kube-version={_kubernetes_version()}",
            values=values,
        )
        assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
        return result.stdout

    def template(
        self, values: dict[str, Any], *, namespace: str = "kubefal-system", release: str = "kubefal"
    ) -> list[dict[str, Any]]:
        text = self.template_text(values, namespace=namespace, release=release)
        return [document for document in yaml.safe_load_all(text) if document]

    def template_error(self, values: dict[str, Any]) -> str:
        result = self.run(
            "template",
            "kubefal",
            str(CHART),
            f"--kube-version={_kubernetes_version()}",
            values=values,
        )
        assert result.returncode != 0, "helm template accepted values it should refuse"
        return result.stderr


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm(binary=local_cluster.testbin_dir() / "helm")


@pytest.fixture(scope="module")
def cluster_helm(cluster: ClusterHandle) -> Helm:
    return Helm(binary=cluster.testbin / "helm", kubeconfig=cluster.kubeconfig)


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


def _find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        item
        for item in objects
        if item["kind"] == kind and (name is None or item["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, rendered {len(matches)}"
    return matches[0]


def _kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {item["kind"] for item in objects}


def _deployment(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    matches = [
        item
        for item in objects
        if item["kind"] == "Deployment"
        and item["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(matches) == 1
    return matches[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _environment(container: dict[str, Any], *, namespace: str) -> dict[str, str]:
    """The container's env as the process sees it (fieldRefs resolved, Secret refs stubbed)."""
    environment: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
        elif variable["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            environment[variable["name"]] = namespace
        else:
            environment[variable["name"]] = "from-a-secret"
    return environment


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def _container_port(container: dict[str, Any], name: str) -> int:
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    port: int = ports[name]
    return port


def _values_file() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return document


# --- lint and the values file ---------------------------------------------------------------


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_the_chart_passes_helm_lint_strict(helm: Helm, value_set: str) -> None:
    result = helm.run(
        "lint",
        "--strict",
        str(CHART),
        f"--kube-version={_kubernetes_version()}",
        values=VALUE_SETS[value_set],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_every_key_in_values_yaml_has_a_comment_above_it() -> None:
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    uncommented: list[str] = []
    list_item_indent: int | None = None
    previous = ""
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            previous = line
            continue
        if list_item_indent is not None and indent > list_item_indent:
            previous = line
            continue  # keys inside a list item are example data, not chart settings
        list_item_indent = None
        if stripped.startswith("- "):
            list_item_indent = indent
        elif re.match(r"^[A-Za-z0-9_./-]+:", stripped):
            above_indent = len(previous) - len(previous.lstrip())
            if not (previous.strip().startswith("#") and above_indent == indent):
                uncommented.append(f"values.yaml:{number}: {stripped}")
        previous = line
    assert not uncommented, "keys without a comment line above them:\n" + "\n".join(uncommented)


def test_values_schema_covers_every_top_level_key_and_forbids_others() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["additionalProperties"] is False
    assert set(_values_file()) == set(schema["properties"]) - {"global"}
    assert set(_values_file()["webhook"]) == set(schema["properties"]["webhook"]["properties"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            {"gateway": {"replicas": 3}},
            "gateway.replicas=3 needs gateway.store.type=redis",
            id="replicas-3-with-sqlite",
        ),
        pytest.param(
            {"scaler": {"default": "keda"}},
            "additional properties 'scaler' not allowed",
            id="cluster-wide-default-scaler-does-not-exist",
        ),
        pytest.param(
            {"webhook": {"replicas": 1}},
            "at '/webhook/replicas': minimum: got 1, want 2",
            id="single-webhook-replica",
        ),
        pytest.param(
            {"webhook": {"tls": {"existingSecret": "my-webhook-tls"}}},
            "webhook.tls.existingSecret needs webhook.tls.caBundle",
            id="webhook-own-certificate-but-no-ca",
        ),
        pytest.param(
            {"webhook": {"replicas": 2, "podDisruptionBudget": {"minAvailable": 2}}},
            "must be below webhook.replicas=2",
            id="webhook-budget-blocking-every-drain",
        ),
        pytest.param(
            {"gateway": {"store": {"type": "redis"}}},
            "gateway.store.type=redis needs gateway.store.redis.url",
            id="redis-without-url",
        ),
        pytest.param(
            {"gateway": {"replicaz": 2}},
            "additional properties 'replicaz' not allowed",
            id="misspelt-key",
        ),
        pytest.param(
            {"machineCatalogue": {"machineTypes": {"S": {"cpu": 1, "memory": "1Gi"}}}},
            "at '/machineCatalogue/machineTypes/S/cpu': got number, want string",
            id="machine-cpu-not-a-string",
        ),
        pytest.param(
            {"machineCatalogue": {"machineTypes": {"GPU-X": {"cpu": "4", "memory": "8Gi"}}}},
            "at '/machineCatalogue/machineTypes/GPU-X': missing property 'gpuProducts'",
            id="gpu-type-without-products",
        ),
        pytest.param(
            {
                "externalMetrics": {"enabled": True},
                "gateway": {"tls": {"existingSecret": "my-tls"}},
            },
            "set externalMetrics.caBundle",
            id="hpa-with-own-certificate-but-no-ca",
        ),
        pytest.param(
            {"gateway": {"ports": {"queue": 8443, "run": 8443}}},
            "The gateway's ports must all differ",
            id="queue-and-run-on-one-port",
        ),
        pytest.param(
            {"gateway": {"tls": {"existingSecret": "a", "certManager": {"enabled": True}}}},
            "are exclusive",
            id="two-certificate-sources",
        ),
    ],
)
def test_invalid_values_fail_rendering_with_a_message_naming_the_fix(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    assert message in helm.template_error(values)


# --- contracts with the rest of the repository ------------------------------------------------


def test_the_chart_crd_copy_is_the_generated_crd() -> None:
    assert CHART_CRD_COPY.read_bytes() == GENERATED_CRD.read_bytes(), (
        f"{CHART_CRD_COPY.relative_to(REPO_ROOT)} differs from crds/{crds.CRD_FILENAME}; "
        f"sync it with: {SYNC_CRD_COMMAND}"
    )


def test_the_rendered_crd_is_the_generated_crd_plus_release_labels_and_keep(helm: Helm) -> None:
    rendered = _find(helm.template({}), "CustomResourceDefinition")
    generated = yaml.safe_load(GENERATED_CRD.read_text(encoding="utf-8"))
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    for key, value in generated["metadata"].get("labels", {}).items():
        assert rendered["metadata"]["labels"][key] == value
    stripped = {**rendered, "metadata": {**rendered["metadata"]}}
    del stripped["metadata"]["annotations"]
    stripped["metadata"]["labels"] = generated["metadata"].get("labels")
    if stripped["metadata"]["labels"] is None:
        del stripped["metadata"]["labels"]
    assert stripped == generated, f"the chart's CRD drifted; sync it with: {SYNC_CRD_COMMAND}"


def test_crds_can_be_left_out_or_left_deletable(helm: Helm) -> None:
    assert "CustomResourceDefinition" not in _kinds(helm.template({"crds": {"enabled": False}}))
    deletable = _find(helm.template({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in deletable["metadata"].get("annotations", {})


def test_default_machine_catalogue_equals_kubefal_api_defaults(helm: Helm) -> None:
    expected_yaml = machines.default_configmap_data()[naming.MACHINE_CATALOGUE_KEY]
    assert _values_file()["machineCatalogue"] == yaml.safe_load(expected_yaml), (
        "values.yaml machineCatalogue differs from kubefal_api.machines.default_catalogue()"
    )
    config_map = _find(helm.template({}), "ConfigMap", "kubefal-machines")
    assert machines.load_from_configmap_data(config_map["data"]) == machines.default_catalogue()


def test_a_default_machine_type_set_to_null_is_dropped_from_the_catalogue(helm: Helm) -> None:
    config_map = _find(
        helm.template({"machineCatalogue": {"machineTypes": {"XS": None}}}),
        "ConfigMap",
        "kubefal-machines",
    )
    catalogue = machines.load_from_configmap_data(config_map["data"])
    assert "XS" not in catalogue.machine_types
    assert catalogue.machine_types["S"] == machines.default_catalogue().machine_types["S"]


def test_gateway_pods_carry_the_labels_the_runners_network_policy_admits(helm: Helm) -> None:
    for value_set in VALUE_SETS.values():
        gateway = _deployment(helm.template(value_set), "gateway")
        labels = gateway["spec"]["template"]["metadata"]["labels"]
        assert naming.gateway_selector().items() <= labels.items()


def test_the_operator_reads_the_settings_the_chart_gives_it(helm: Helm) -> None:
    objects = helm.template(
        {"runner": {"image": {"repository": "registry.example/run", "tag": "7"}}}
    )
    container = _container(_deployment(objects, "operator"))
    config = operator_config.OperatorConfig.from_environment(
        _environment(container, namespace="kubefal-system")
    )
    config_map = _find(objects, "ConfigMap")
    assert (config.catalogue_namespace, config.catalogue_name) == (
        config_map["metadata"]["namespace"],
        config_map["metadata"]["name"],
    )
    assert config.render.runner_image == "registry.example/run:7"
    assert config.metrics_port == _container_port(container, "metrics")
    assert config.gateway.queue_url == "https://kubefal-gateway-queue.kubefal-system.svc"
    assert config.gateway.run_url == "https://kubefal-gateway-run.kubefal-system.svc"
    assert config.gateway_admin_url == "http://kubefal-gateway-admin.kubefal-system.svc:9090"
    assert config.actuated
    liveness = container["livenessProbe"]["httpGet"]
    assert liveness == {"path": "/healthz", "port": "health"}
    health_port = _container_port(container, "health")
    assert container_env(container)["KUBEFAL_OPERATOR_LIVENESS"].endswith(f":{health_port}/healthz")


def test_the_gateway_reads_the_settings_the_chart_gives_it(helm: Helm) -> None:
    objects = helm.template({})
    deployment = _deployment(objects, "gateway")
    container = _container(deployment)
    settings = gateway_settings.load(
        [], environ=_environment(container, namespace="kubefal-system")
    )
    assert settings.host == "0.0.0.0"
    assert settings.queue_port == _container_port(container, "queue")
    assert settings.run_port == _container_port(container, "run")
    assert settings.admin_port == _container_port(container, "admin")
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert settings.tls_cert == pathlib.Path(mounts["tls"]) / "tls.crt"
    assert settings.tls_key == pathlib.Path(mounts["tls"]) / "tls.key"
    assert settings.store == f"sqlite://{mounts['queue']}/queue.db"
    assert settings.key_namespace == "kubefal-system"
    volumes = {
        volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]
    }
    claim = _find(objects, "PersistentVolumeClaim", "kubefal-gateway-queue")
    assert volumes["queue"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_several_gateway_replicas_share_redis_and_get_a_disruption_budget(helm: Helm) -> None:
    objects = helm.template(REDIS_VALUES)
    deployment = _deployment(objects, "gateway")
    container = _container(deployment)
    settings = gateway_settings.load([], environ=_environment(container, namespace="ns"))
    assert settings.store == "redis://kubefal-redis:6379/0"
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "PersistentVolumeClaim" not in _kinds(objects)
    budget = _find(objects, "PodDisruptionBudget", "kubefal-gateway")
    assert (
        budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )
    assert not [
        item
        for item in helm.template({})
        if item["kind"] == "PodDisruptionBudget" and item["metadata"]["name"] == "kubefal-gateway"
    ]


def test_the_redis_url_can_come_from_a_secret(helm: Helm) -> None:
    values = {
        "gateway": {
            "replicas": 2,
            "store": {"type": "redis", "redis": {"existingSecret": "r"}},
            "storage": REDIS_VALUES["gateway"]["storage"],
        }
    }
    container = _container(_deployment(helm.template(values), "gateway"))
    store = next(item for item in container["env"] if item["name"] == "KUBEFAL_GATEWAY_STORE")
    assert store["valueFrom"]["secretKeyRef"] == {"name": "r", "key": "url"}


def test_services_route_port_443_to_the_gateway_listeners(helm: Helm) -> None:
    objects = helm.template({"keda": {"enabled": True}, "externalMetrics": {"enabled": True}})
    container = _container(_deployment(objects, "gateway"))
    port_names = {port["name"] for port in container["ports"]}
    services = {
        item["metadata"]["name"]: item
        for item in objects
        if item["kind"] == "Service" and item["metadata"]["name"].startswith("kubefal-gateway-")
    }
    for name, target in [
        ("kubefal-gateway-queue", "queue"),
        ("kubefal-gateway-run", "run"),
        ("kubefal-gateway-metrics-api", "metrics-api"),
    ]:
        [port] = services[name]["spec"]["ports"]
        assert (port["port"], port["targetPort"]) == (443, target)
    admin_ports = {
        port["targetPort"] for port in services["kubefal-gateway-admin"]["spec"]["ports"]
    }
    assert admin_ports == {"admin", "keda-scaler"}
    pod_labels = _deployment(objects, "gateway")["spec"]["template"]["metadata"]["labels"]
    for service in services.values():
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
        assert service["spec"]["selector"].items() <= pod_labels.items()
    operator_env = container_env(_container(_deployment(objects, "operator")))
    assert operator_env["KUBEFAL_KEDA_SCALER_ADDRESS"] == (
        f"kubefal-gateway-admin.kubefal-system.svc:{_container_port(container, 'keda-scaler')}"
    )


def _verbs(role: dict[str, Any], group: str, resource: str) -> set[str]:
    return {
        verb
        for rule in role["rules"]
        if group in rule["apiGroups"] and resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_scaler_objects_are_always_watched_but_written_only_when_their_actuator_is_on(
    helm: Helm,
) -> None:
    default = helm.template({})
    assert "APIService" not in _kinds(default)
    role = _find(default, "ClusterRole", "kubefal-operator")
    assert _verbs(role, "keda.sh", "scaledobjects") == {"list", "watch"}
    assert _verbs(role, "autoscaling", "horizontalpodautoscalers") == {"list", "watch"}
    writes = {"create", "patch", "delete"}
    keda = helm.template({"keda": {"enabled": True}})
    keda_role = _find(keda, "ClusterRole", "kubefal-operator")
    assert _verbs(keda_role, "keda.sh", "scaledobjects") == {"list", "watch", *writes}
    assert _verbs(keda_role, "autoscaling", "horizontalpodautoscalers") == {"list", "watch"}
    assert "APIService" not in _kinds(keda)
    hpa = helm.template({"externalMetrics": {"enabled": True}})
    assert _find(hpa, "APIService")["metadata"]["name"] == "v1beta1.external.metrics.k8s.io"
    hpa_role = _find(hpa, "ClusterRole", "kubefal-operator")
    assert _verbs(hpa_role, "autoscaling", "horizontalpodautoscalers") == {"list", "watch", *writes}
    assert _verbs(hpa_role, "keda.sh", "scaledobjects") == {"list", "watch"}


def _operator_source() -> str:
    package = REPO_ROOT / "operator" / "kubefal_operator"
    return "\n".join(path.read_text(encoding="utf-8") for path in package.rglob("*.py"))


# Read by boto3 (the gateway's S3 store), not by the gateway's own settings.
GATEWAY_AWS_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})


def test_every_environment_variable_the_chart_sets_is_read_by_its_process(helm: Helm) -> None:
    """No dead settings: the operator's names are read somewhere in its package (it reads
    no KUBEFAL_DEFAULT_SCALER: spec.scaler defaults to builtin in the CRD, so a cluster-wide
    default could never apply); the gateway's and the webhook's are KUBEFAL_<PROCESS>_<FIELD>
    of a field of their Settings (the gateway's AWS keys are boto3's); the control plane's are
    read by its settings module."""
    operator_source = _operator_source()
    controlplane_source = (
        REPO_ROOT / "controlplane" / "kubefal_controlplane" / "settings.py"
    ).read_text(encoding="utf-8")
    gateway_names = {
        gateway_settings.ENV_PREFIX + field.name.upper()
        for field in dataclasses.fields(gateway_settings.Settings)
    }
    webhook_names = {
        webhook_settings.ENV_PREFIX + field.name.upper()
        for field in dataclasses.fields(webhook_settings.Settings)
    }
    dead: list[str] = []
    for value_set in VALUE_SETS.values():
        objects = helm.template(value_set)
        for name in container_env(_container(_deployment(objects, "operator"))):
            if f'"{name}"' not in operator_source:
                dead.append(f"operator: {name}")
        dead += [
            f"gateway: {name}"
            for name in container_env(_container(_deployment(objects, "gateway")))
            if name not in gateway_names | GATEWAY_AWS_ENV
        ]
        if value_set.get("controlPlane", {}).get("enabled", True):
            dead += [
                f"controlplane: {name}"
                for name in container_env(_container(_deployment(objects, "controlplane")))
                if f'"{name}"' not in controlplane_source
            ]
        if value_set.get("webhook", {}).get("enabled", True):
            dead += [
                f"webhook: {name}"
                for name in container_env(_container(_deployment(objects, "webhook")))
                if name not in webhook_names
            ]
    assert not dead, "environment variables no process reads:\n" + "\n".join(sorted(set(dead)))
    keda_env = container_env(
        _container(_deployment(helm.template({"keda": {"enabled": True}}), "operator"))
    )
    assert "KUBEFAL_KEDA_SCALER_ADDRESS" in keda_env
    assert "KUBEFAL_KEDA_SCALER_ADDRESS" not in container_env(
        _container(_deployment(helm.template({}), "operator"))
    )


def test_the_operator_role_covers_exactly_the_resources_its_handlers_use(helm: Helm) -> None:
    """Every resource kopf watches for the operator can be listed and watched; the role names
    no other resource than those, their status, Events and kopf's CRD scanning."""
    scoped = helm.template({"operator": {"watchNamespaces": ["team-a"]}})
    role = _find(scoped, "ClusterRole", "kubefal-operator")
    namespace_role = next(
        item
        for item in scoped
        if item["kind"] == "Role" and item["metadata"]["namespace"] == "team-a"
    )
    watched = {
        (resource[0] if len(resource) == 3 else "", resource[-1])
        for resource in (
            operator_handlers.FALAPPS,
            operator_handlers.DEPLOYMENTS,
            operator_handlers.SERVICES,
            operator_handlers.NETWORK_POLICIES,
            operator_handlers.DISRUPTION_BUDGETS,
            operator_handlers.PODS,
            operator_handlers.NODES,
            operator_handlers.CONFIG_MAPS,
            operator_handlers.SCALED_OBJECTS,
            operator_handlers.AUTOSCALERS,
            operator_handlers.BUILD_JOBS,
        )
    }
    for group, resource in watched:
        verbs = _verbs(role, group, resource) | _verbs(namespace_role, group, resource)
        assert {"list", "watch"} <= verbs, f"{group}/{resource}"
    granted = {
        (group, resource)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    kopf_scanning = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
    per_namespace = {("", "pods")}
    assert granted == (watched - per_namespace) | kopf_scanning | {
        ("kubefal.io", "falapps/status"),
        ("", "events"),
    }
    assert namespace_role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "patch"]}
    ]
    for rules in (role["rules"], namespace_role["rules"]):
        assert not any("update" in rule["verbs"] or "*" in rule["verbs"] for rule in rules)


def test_pod_rights_are_per_watched_namespace_when_the_operator_is_scoped(helm: Helm) -> None:
    """Serving every namespace, the ClusterRole may patch pods anywhere (documented); scoped,
    a Role and RoleBinding in each watched namespace carry the pod rights and nothing else."""
    cluster_wide = _find(helm.template({}), "ClusterRole", "kubefal-operator")
    assert _verbs(cluster_wide, "", "pods") == {"list", "watch", "patch"}
    scoped = helm.template({"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    assert _verbs(_find(scoped, "ClusterRole", "kubefal-operator"), "", "pods") == set()
    for kind in ("Role", "RoleBinding"):
        placed = {
            item["metadata"]["namespace"]
            for item in scoped
            if item["kind"] == kind and item["metadata"]["name"] == "kubefal-operator-runner-pods"
        }
        assert placed == {"team-a", "team-b"}, kind
    binding = next(
        item
        for item in scoped
        if item["kind"] == "RoleBinding"
        and item["metadata"]["name"] == "kubefal-operator-runner-pods"
    )
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kubefal-operator", "namespace": "kubefal-system"}
    ]


def test_the_operator_hardens_runners_and_points_them_at_this_gateway(helm: Helm) -> None:
    """The NetworkPolicy settings select exactly the gateway pods of this release in its
    namespace; fal_client in runners reaches the in-cluster Services and trusts the CA in the
    gateway's TLS Secret; runner hardening follows runner.securityContext."""
    objects = helm.template(
        {
            "runner": {"securityContext": {"runAsUser": 2000, "readOnlyRootFilesystem": False}},
            "gateway": {"publicHosts": {"run": "run.example", "queue": "queue.example"}},
        },
        namespace="platform",
        release="edge",
    )
    operator = _deployment(objects, "operator")
    container = _container(operator)
    config = operator_config.OperatorConfig.from_environment(
        _environment(container, namespace="platform")
    ).render
    gateway_pod_labels = _deployment(objects, "gateway")["spec"]["template"]["metadata"]["labels"]
    assert config.gateway_namespace == "platform"
    assert dict(config.gateway_pod_labels).items() <= gateway_pod_labels.items()
    assert {"app.kubernetes.io/instance", "app.kubernetes.io/component"} <= dict(
        config.gateway_pod_labels
    ).keys()
    run_service = _find(objects, "Service", "edge-kubefal-gateway-run")
    queue_service = _find(objects, "Service", "edge-kubefal-gateway-queue")
    assert run_service["spec"]["ports"][0]["port"] == 443
    assert config.fal_run_host == "edge-kubefal-gateway-run.platform.svc"
    assert config.fal_queue_run_host == "edge-kubefal-gateway-queue.platform.svc"
    assert queue_service["metadata"]["namespace"] == "platform"
    assert (config.runner_run_as_user, config.runner_run_as_group) == (2000, 10001)
    assert config.runner_read_only_root_filesystem is False
    ca_file = container_env(container)["KUBEFAL_GATEWAY_CA_FILE"]
    mount = next(
        item for item in container["volumeMounts"] if ca_file.startswith(item["mountPath"] + "/")
    )
    volume = next(
        item
        for item in operator["spec"]["template"]["spec"]["volumes"]
        if item["name"] == mount["name"]
    )
    tls_secret = _find(objects, "Secret", "edge-kubefal-gateway-tls")
    assert volume["secret"]["secretName"] == tls_secret["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": ca_file.rsplit("/", 1)[1]}]
    assert "ca.crt" in tls_secret["data"]

    plain = container_env(
        _container(_deployment(helm.template({"runner": {"gatewayClient": False}}), "operator"))
    )
    assert not {"KUBEFAL_RUNNER_FAL_RUN_HOST", "KUBEFAL_GATEWAY_CA_FILE"} & plain.keys()


def test_namespaces_are_watched_only_when_the_operator_is_scoped_to_some(helm: Helm) -> None:
    role = _find(helm.template({}), "ClusterRole", "kubefal-operator")
    assert _verbs(role, "", "namespaces") == set()
    scoped = helm.template({"operator": {"watchNamespaces": ["team-a"]}})
    assert _verbs(_find(scoped, "ClusterRole", "kubefal-operator"), "", "namespaces") == {
        "list",
        "watch",
    }


def test_the_generated_certificate_covers_every_service_and_the_apiservice_trusts_it(
    helm: Helm,
) -> None:
    values = {
        "externalMetrics": {"enabled": True},
        "gateway": {"publicHosts": {"run": "run.example:8443"}},
    }
    objects = helm.template(values, namespace="platform")
    secret = _find(objects, "Secret", "kubefal-gateway-tls")
    certificate = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    authority = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    certificate.verify_directly_issued_by(authority)
    names = set(
        certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    )
    gateway_services = (
        item
        for item in objects
        if item["kind"] == "Service" and item["metadata"]["name"].startswith("kubefal-gateway-")
    )
    for service in gateway_services:
        if service["metadata"]["name"] != "kubefal-gateway-admin":  # plain HTTP
            assert f"{service['metadata']['name']}.platform.svc" in names
    assert {"run.example", "localhost"} <= names
    apiservice = _find(objects, "APIService")
    assert apiservice["spec"]["caBundle"] == secret["data"]["ca.crt"]
    assert apiservice["spec"]["service"] == {
        "name": "kubefal-gateway-metrics-api",
        "namespace": "platform",
        "port": 443,
    }


def test_cert_manager_issues_the_certificate_and_injects_the_apiservice_ca(helm: Helm) -> None:
    values = {
        "externalMetrics": {"enabled": True},
        "gateway": {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}},
    }
    objects = helm.template(values)
    certificate = _find(objects, "Certificate")
    assert "kubefal-gateway-metrics-api.kubefal-system.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["secretName"] == "kubefal-gateway-tls"
    assert "Secret" not in {
        item["kind"] for item in objects if item["metadata"]["name"] == "kubefal-gateway-tls"
    }
    apiservice = _find(objects, "APIService")
    assert apiservice["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "kubefal-system/kubefal-gateway"
    }


def test_the_webhook_reads_the_settings_the_chart_gives_it(helm: Helm) -> None:
    objects = helm.template({"operator": {"image": {"repository": "registry.example/cp"}}})
    deployment = _deployment(objects, "webhook")
    container = _container(deployment)
    assert container["command"] == ["python", "-m", "kubefal_webhook"]
    assert container["image"] == "registry.example/cp:" + _chart_app_version()
    settings = webhook_settings.load([], environ=_environment(container, namespace="ns"))
    assert settings.host == "0.0.0.0"
    assert settings.port == _container_port(container, "https")
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert settings.tls_cert == pathlib.Path(mounts["tls"]) / "tls.crt"
    assert settings.tls_key == pathlib.Path(mounts["tls"]) / "tls.key"
    catalogue = _find(objects, "ConfigMap")
    assert (settings.catalogue_namespace, settings.catalogue_name) == (
        catalogue["metadata"]["namespace"],
        catalogue["metadata"]["name"],
    )
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}
    assert deployment["spec"]["replicas"] == 2
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = _find(objects, "Service", "kubefal-webhook")
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    budget = _find(objects, "PodDisruptionBudget", "kubefal-webhook")
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert (
        budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )
    secret_volume = next(
        volume
        for volume in deployment["spec"]["template"]["spec"]["volumes"]
        if volume["name"] == "tls"
    )
    assert secret_volume["secret"]["secretName"] == "kubefal-webhook-tls"


def _chart_app_version() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    return str(chart["appVersion"])


def test_the_webhook_configuration_sends_falapp_writes_to_a_service_it_trusts(
    helm: Helm,
) -> None:
    objects = helm.template({}, namespace="platform")
    configuration = _find(objects, "ValidatingWebhookConfiguration")
    [webhook] = configuration["webhooks"]
    assert webhook["rules"] == [
        {
            "apiGroups": ["kubefal.io"],
            "apiVersions": ["v1alpha1"],
            "resources": ["falapps"],
            "operations": ["CREATE", "UPDATE"],
            "scope": "Namespaced",
        }
    ]
    assert (webhook["sideEffects"], webhook["failurePolicy"], webhook["timeoutSeconds"]) == (
        "None",
        "Fail",
        10,
    )
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["clientConfig"]["service"] == {
        "name": "kubefal-webhook",
        "namespace": "platform",
        "path": "/validate",
        "port": 443,
    }
    secret = _find(objects, "Secret", "kubefal-webhook-tls")
    assert webhook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    certificate = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    authority = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    certificate.verify_directly_issued_by(authority)
    names = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
    assert "kubefal-webhook.platform.svc" in names
    gateway_ca = _find(objects, "Secret", "kubefal-gateway-tls")["data"]["ca.crt"]
    assert gateway_ca != secret["data"]["ca.crt"], "the webhook's CA must be its own"


def test_the_webhook_certificate_can_come_from_cert_manager_or_an_existing_secret(
    helm: Helm,
) -> None:
    issued = helm.template(
        {"webhook": {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}}}
    )
    certificate = _find(issued, "Certificate", "kubefal-webhook")
    assert certificate["spec"]["secretName"] == "kubefal-webhook-tls"
    assert "kubefal-webhook.kubefal-system.svc" in certificate["spec"]["dnsNames"]
    injected = _find(issued, "ValidatingWebhookConfiguration")
    assert injected["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "kubefal-system/kubefal-webhook"
    }
    assert "caBundle" not in injected["webhooks"][0]["clientConfig"]
    own = helm.template(
        {"webhook": {"tls": {"existingSecret": "my-webhook-tls", "caBundle": "Q0E="}}}
    )
    assert not [item for item in own if item["metadata"]["name"] == "kubefal-webhook-tls"]
    [webhook] = _find(own, "ValidatingWebhookConfiguration")["webhooks"]
    assert webhook["clientConfig"]["caBundle"] == "Q0E="
    volumes = _deployment(own, "webhook")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "my-webhook-tls"}} in volumes


def test_the_webhook_can_be_left_out(helm: Helm) -> None:
    objects = helm.template({"webhook": {"enabled": False}})
    assert "ValidatingWebhookConfiguration" not in _kinds(objects)
    assert not [
        item
        for item in objects
        if item["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "webhook"
    ]


def test_containers_are_hardened_by_default(helm: Helm) -> None:
    objects = helm.template({})
    for component in ("operator", "gateway", "webhook", "controlplane"):
        deployment = _deployment(objects, component)
        pod = deployment["spec"]["template"]["spec"]
        context = _container(deployment)["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
    operator = _deployment(objects, "operator")
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}


def test_notes_tell_how_to_create_a_key_and_configure_fal_client(cluster_helm: Helm) -> None:
    release = f"kf-{uuid.uuid4().hex[:6]}"
    install = cluster_helm.run(
        "install",
        release,
        str(CHART),
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
    helm: Helm, cluster: ClusterHandle, tmp_path: pathlib.Path, e2e_logs: list[pathlib.Path]
) -> None:
    """The gateway process runs here with the Deployment's environment; only what is
    pod-specific (bind address, ports, file paths, kubeconfig) is replaced. A client trusting
    the generated ca.crt (what SSL_CERT_FILE points at) verifies the queue, run and REST
    listeners under their Service names."""
    objects = helm.template({}, namespace="platform")
    secret = _find(objects, "Secret", "kubefal-gateway-tls")
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    container = _container(_deployment(objects, "gateway"))
    assert container["command"] == ["python", "-m", "kubefal_gateway"]
    environment = _environment(container, namespace="platform")
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
        _stop(gateway)


def _ready_over_tls(url: str, *, context: ssl.SSLContext) -> bool:
    try:
        return httpx.get(url, timeout=2.0, verify=context).status_code == 200
    except httpx.TransportError:
        return False


def test_the_real_webhook_starts_with_the_charts_settings_and_serves_its_certificate(
    helm: Helm, cluster: ClusterHandle, tmp_path: pathlib.Path, e2e_logs: list[pathlib.Path]
) -> None:
    """The webhook process runs here with the Deployment's environment (only its address,
    port, certificate paths and kubeconfig replaced) and the generated certificate; a client
    trusting the ValidatingWebhookConfiguration's caBundle verifies it under the Service's
    name, as the API server does, and its readiness probe path answers."""
    objects = helm.template({}, namespace="platform")
    secret = _find(objects, "Secret", "kubefal-webhook-tls")
    for key in ("tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    [webhook] = _find(objects, "ValidatingWebhookConfiguration")["webhooks"]
    (tmp_path / "ca.crt").write_bytes(base64.b64decode(webhook["clientConfig"]["caBundle"]))
    container = _container(_deployment(objects, "webhook"))
    environment = _environment(container, namespace="platform")
    [port] = free_ports(1)
    environment.update(
        KUBEFAL_WEBHOOK_HOST="127.0.0.1",
        KUBEFAL_WEBHOOK_PORT=str(port),
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
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def test_the_real_operator_starts_with_the_charts_settings_and_machine_catalogue(
    helm: Helm,
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
    config_map = _find(objects, "ConfigMap")
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(config_map))
    container = _container(_deployment(objects, "operator"))
    assert container["command"] == ["python", "-m", "kubefal_operator"]
    assert container["args"] == [f"--namespace={namespace}"]
    environment = _environment(container, namespace=namespace)
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
        _stop(operator)


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
    objects = Helm(binary=cluster.testbin / "helm").template(
        values, namespace=namespace, release=release
    )
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(_find(objects, "ConfigMap")))
    container = _container(_deployment(objects, "operator"))
    environment = _environment(container, namespace=namespace)
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
            _stop(operator)
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
    objects = Helm(binary=cluster.testbin / "helm").template(
        {}, namespace=namespace, release=release
    )
    arguments = tuple(_container(_deployment(objects, "controlplane"))["args"])
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


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_rendered_object_is_accepted_by_the_api_server(
    helm: Helm, cluster: ClusterHandle, namespace: str, keda_crds: None, value_set: str
) -> None:
    release = f"kf-{uuid.uuid4().hex[:6]}"
    values = copy.deepcopy(VALUE_SETS[value_set])
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


def _can(cluster: ClusterHandle, verb: str, resource: str, *, who: str, namespace: str) -> bool:
    answer = cluster.kubectl(
        "auth", "can-i", verb, resource, f"--namespace={namespace}", f"--as={who}", check=False
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
    objects = Helm(binary=cluster.testbin / "helm").template(
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
        ("patch", "falapps.kubefal.io"),
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
    ]
    operator_may_not = [
        ("get", "secrets"),
        ("create", "pods"),
        ("delete", "pods"),
        ("update", "pods"),
        ("update", "deployments.apps"),
        ("update", "falapps.kubefal.io"),
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
    cluster_helm: Helm, cluster: ClusterHandle, namespace: str
) -> None:
    release = f"kf-{uuid.uuid4().hex[:6]}"
    # The webhook's failurePolicy is Fail and no webhook pod serves here: it must review
    # FalApps of this test's namespace only, not those of tests running alongside.
    install = cluster_helm.run(
        "install",
        release,
        str(CHART),
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
            str(CHART),
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
            str(CHART),
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
