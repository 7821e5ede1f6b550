"""Fixtures that give every e2e test a real Kubernetes API.

By default the session starts the local control plane (``e2e/cluster.py``), or reuses
the one ``make cluster-up`` left running. With ``KUBEFAL_E2E_KUBECONFIG`` set, the same
tests run against that cluster instead (kind on a laptop): the fake GPU nodes are
created there too and a local kwok process plays their kubelet.

Each test gets a fresh namespace; when the test fails, the namespace's events and pods
and the logs the test registered (``e2e_logs``) are printed with the failure.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from e2e import cluster as local_cluster
from testkit import waiting


@dataclasses.dataclass
class ClusterHandle:
    """What a test needs to reach the cluster under test."""

    kubeconfig: pathlib.Path
    testbin: pathlib.Path
    local: local_cluster.LocalCluster | None

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def component_logs(self) -> str:
        return self.local.log_tails() if self.local else ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    e2e_dir = pathlib.Path(__file__).parent
    for item in items:
        if e2e_dir in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    funcargs = getattr(item, "funcargs", {})
    if report.when == "call" and report.failed and "namespace" in funcargs:
        namespace: str = funcargs["namespace"]
        text = [f"===== namespace {namespace} ====="]
        handle = funcargs.get("cluster") or item._request.getfixturevalue("cluster")  # type: ignore[attr-defined]
        text.append(_namespace_report(handle, namespace))
        for path in funcargs.get("e2e_logs", []):
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-80:]
                text.append(f"===== {path} =====\n" + "\n".join(lines))
        report.sections.append(("kubefal e2e diagnostics", "\n".join(text)))
    return report


def _external_cluster(kubeconfig: pathlib.Path) -> Iterator[ClusterHandle]:
    """Run against a cluster given by kubeconfig: fake GPU nodes with a local kwok."""
    testbin = local_cluster.testbin_dir()
    handle = ClusterHandle(kubeconfig=kubeconfig, testbin=testbin, local=None)
    documents = [local_cluster.node_manifest(node) for node in local_cluster.DEFAULT_NODES]
    handle.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(documents))
    log_path = pathlib.Path(".kubefal") / "e2e-kwok.log"
    log_path.parent.mkdir(exist_ok=True)
    with log_path.open("wb") as log:
        kwok = subprocess.Popen(
            [
                str(testbin / "kwok"),
                f"--kubeconfig={kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--manage-nodes-with-label-selector=",
                "--manage-single-node=",
                f"--cidr={local_cluster.POD_CIDR}",
                "--node-ip=127.0.0.1",
                "--node-lease-duration-seconds=40",
                "-c",
                str(testbin / "kwok-stages.yaml"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield handle
    finally:
        local_cluster.stop_pids([kwok.pid])


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterHandle]:
    external = os.environ.get("KUBEFAL_E2E_KUBECONFIG")
    if external:
        yield from _external_cluster(pathlib.Path(external))
        return
    running = local_cluster.LocalCluster.attach()
    if running is not None:
        assert running.testbin is not None
        yield ClusterHandle(running.kubeconfig, running.testbin, running)
        return
    state_dir = local_cluster.REPO_ROOT / ".kubefal" / f"e2e-{os.getpid()}"
    # KUBEFAL_REAL_NODE=1: also a node run by a real kubelet with containerd (e2e/realnode.py).
    real_node = os.environ.get("KUBEFAL_REAL_NODE") == "1"
    with local_cluster.LocalCluster(state_dir, real_node=real_node) as started:
        assert started.testbin is not None
        yield ClusterHandle(started.kubeconfig, started.testbin, started)


@pytest.fixture(scope="session")
def api_client(cluster: ClusterHandle) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def falapp_crd(api_client: k8s.ApiClient) -> dict[str, Any]:
    """The committed FalApp CRD, installed (or updated) and serving."""
    from e2e import operator_harness

    return operator_harness.install_falapp_crd(api_client)


@pytest.fixture
def e2e_logs() -> list[pathlib.Path]:
    """Log files a test wants printed if it fails (operator, gateway, runner logs)."""
    return []


def _namespace_report(cluster: ClusterHandle, namespace: str) -> str:
    sections = [
        cluster.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False),
        cluster.kubectl("get", "all,falapps", "-n", namespace, "-o", "wide", check=False),
    ]
    return "\n".join(section for section in sections if section)


@pytest.fixture
def namespace(
    request: pytest.FixtureRequest,
    cluster: ClusterHandle,
    api_client: k8s.ApiClient,
    e2e_logs: list[pathlib.Path],
) -> Iterator[str]:
    """A fresh namespace; the diagnostics hook above reports on it if the test fails."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"e2e-{slug}-{uuid.uuid4().hex[:5]}"
    core = k8s.CoreV1Api(api_client)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    waiting.wait_for(
        lambda: any(
            sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items
        ),
        timeout=60,
        description=f"the default ServiceAccount in {name}",
    )
    yield name
    core.delete_namespace(name, propagation_policy="Background")
