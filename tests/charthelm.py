"""The chart rendered by the real ``helm`` binary, for every test of what the chart hands each
component: the template-only tests in tests/ (``helm template``, no cluster) and the e2e tests
that install it.

One copy of the rendering (the chart, its namespace, the Kubernetes version the e2e cluster runs),
of the value sets every chart test renders, and of the lookups into what it renders, so every
chart test renders the same way.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import subprocess
from typing import Any

import pytest
import yaml

from e2e import cluster

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "charts" / "kubefal"
NAMESPACE = "kubefal-system"

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
"""Value sets every chart test renders (lint, the API server's dry run)."""


def kubernetes_version() -> str:
    text = (REPO_ROOT / "e2e" / "versions.env").read_text(encoding="utf-8")
    match = re.search(r"^K8S_VERSION=(\S+)$", text, flags=re.MULTILINE)
    if match is None:
        raise AssertionError("e2e/versions.env has no K8S_VERSION")
    return match.group(1)


@dataclasses.dataclass(frozen=True)
class Helm:
    """The testbin's helm binary, run against the chart (with a kubeconfig: against a cluster)."""

    binary: pathlib.Path
    kubeconfig: pathlib.Path | None = None

    def run(
        self, *args: str, values: dict[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        if not self.binary.exists():
            pytest.fail(f"helm not found at {self.binary}: run `make testbin`")
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

    def template_result(
        self, values: dict[str, Any], *, namespace: str | None = NAMESPACE, release: str = "kubefal"
    ) -> subprocess.CompletedProcess[str]:
        """``helm template`` of the chart (``namespace`` None: no --namespace flag)."""
        flags = [] if namespace is None else [f"--namespace={namespace}"]
        return self.run(
            "template",
            release,
            str(CHART),
            *flags,
            f"--kube-version={kubernetes_version()}",
            values=values,
        )

    def template_text(
        self, values: dict[str, Any], *, namespace: str = NAMESPACE, release: str = "kubefal"
    ) -> str:
        result = self.template_result(values, namespace=namespace, release=release)
        assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
        return result.stdout

    def template(
        self, values: dict[str, Any], *, namespace: str = NAMESPACE, release: str = "kubefal"
    ) -> list[dict[str, Any]]:
        text = self.template_text(values, namespace=namespace, release=release)
        return [document for document in yaml.safe_load_all(text) if document]

    def template_error(self, values: dict[str, Any]) -> str:
        result = self.template_result(values, namespace=None)
        assert result.returncode != 0, "helm template accepted values it should refuse"
        return result.stderr


def helm() -> Helm:
    """The testbin's helm, with no cluster (``make testbin`` provides it)."""
    return Helm(binary=cluster.testbin_dir() / "helm")


def helm_template(values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return helm().template_result(values)


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    return helm().template(values)


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one rendered ``kind`` named ``name`` (None: the only ``kind``)."""
    matches = [
        item
        for item in objects
        if item["kind"] == kind and (name is None or item["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, rendered {len(matches)}"
    return matches[0]


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {item["kind"] for item in objects}


def deployment(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    """The one Deployment of ``component`` (its app.kubernetes.io/component label)."""
    matches = [
        item
        for item in objects
        if item["kind"] == "Deployment"
        and item["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(matches) == 1
    return matches[0]


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return pod(deployment)["containers"][0]  # type: ignore[no-any-return]


def sole_container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The pod's container, asserting it is the only one."""
    containers: list[dict[str, Any]] = pod(deployment)["containers"]
    assert len(containers) == 1
    return containers[0]


def env_items(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The first container's env entries by name (each entry whole: value or valueFrom)."""
    return {item["name"]: item for item in container(deployment).get("env", [])}


def environment(container: dict[str, Any], *, namespace: str) -> dict[str, str]:
    """The container's env as the process sees it (fieldRefs resolved, Secret refs stubbed)."""
    resolved: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" in variable:
            resolved[variable["name"]] = variable["value"]
        elif variable["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            resolved[variable["name"]] = namespace
        else:
            resolved[variable["name"]] = "from-a-secret"
    return resolved


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's plain env values by name (valueFrom entries as "")."""
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def container_port(container: dict[str, Any], name: str) -> int:
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    port: int = ports[name]
    return port
