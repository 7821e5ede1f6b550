"""The chart rendered by the real ``helm`` binary (``helm template``, no cluster), for the tests
that check what the chart hands each component.

One copy of the rendering (the chart, its namespace, the Kubernetes version the e2e cluster runs)
and of the lookups into what it renders, so every chart test renders the same way.
"""

from __future__ import annotations

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


def kubernetes_version() -> str:
    text = (REPO_ROOT / "e2e" / "versions.env").read_text(encoding="utf-8")
    match = re.search(r"^K8S_VERSION=(\S+)$", text, flags=re.MULTILINE)
    assert match is not None
    return match.group(1)


def helm_template(values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    helm = cluster.testbin_dir() / "helm"
    if not helm.exists():
        pytest.fail(f"helm not found at {helm}: run `make testbin`")
    return subprocess.run(
        [
            str(helm),
            "template",
            "kubefal",
            str(CHART),
            f"--namespace={NAMESPACE}",
            f"--kube-version={kubernetes_version()}",
            "--values=-",
        ],
        input=yaml.safe_dump(values),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    completed = helm_template(values)
    assert completed.returncode == 0, completed.stderr
    return [document for document in yaml.safe_load_all(completed.stdout) if document]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for item in objects:
        if item["kind"] == kind and item["metadata"]["name"] == name:
            return item
    raise AssertionError(f"no {kind} {name}")


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return pod(deployment)["containers"][0]  # type: ignore[no-any-return]


def env_items(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The first container's env entries by name (each entry whole: value or valueFrom)."""
    return {item["name"]: item for item in container(deployment).get("env", [])}
