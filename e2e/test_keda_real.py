"""Real KEDA scales a ``scaler: keda`` FalApp from zero and back through the gateway's push scaler.

KEDA's operator (built from its Go module at the pinned version by ``e2e/testbin.sh --keda``) runs
as a local process bound to 127.0.0.1 and watching only the test's namespace. The chart is
installed with ``keda.enabled`` on the real node (e2e/test_helm_real_node.py's release, the
operator told to give ScaledObjects the gateway's scaler at 127.0.0.1). The operator in its
container renders the ScaledObject; KEDA connects to the gateway container's ``external-push``
scaler; a fal_client request makes the gateway report the app active and KEDA scales the runner
Deployment 0 → 1 (the runner pod on a kwok CPU node, played by the e2e pod runner); after
``keepAlive`` the gateway reports it inactive and KEDA scales it back to 0.

Runs with ``KUBEFAL_REAL_NODE=1 KUBEFAL_KEDA=1`` (``make test`` when the machine can, see
e2e/preflight.py; ``make test-keda`` alone).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client as k8s

from e2e import cluster as local_cluster
from e2e import podrunner, preflight
from e2e.conftest import ClusterHandle
from e2e.system import RUNNER_SELECTOR
from e2e.test_helm_real_node import (  # noqa: F401  (release: a fixture)
    TEXT_STATS,
    _wait_ready,
    prepare_text_stats,
    release,
    subscribe_through_release,
)
from e2e.test_realnode import node  # noqa: F401  (fixture)
from testkit import waiting
from testkit.certs import issue_serving_certificate

KEDA_PORT = local_cluster.free_port()


@pytest.fixture
def release_overrides() -> dict[str, Any]:
    return {
        "values": {"keda": {"enabled": True, "port": KEDA_PORT}},
        "env": {"operator": {"KUBEFAL_KEDA_SCALER_ADDRESS": f"127.0.0.1:{KEDA_PORT}"}},
    }


@pytest.fixture
def keda(cluster: ClusterHandle, namespace: str, tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """KEDA's operator, watching only ``namespace``; yields its log."""
    preflight.require("real KEDA", "KUBEFAL_KEDA", "make test-keda")
    binary = cluster.testbin / "keda-operator"
    assert binary.is_file(), "run `bash e2e/testbin.sh --keda`"
    crds = [*sorted((cluster.testbin / "crds").glob("keda.sh_*.yaml"))]
    crds += sorted((cluster.testbin / "crds-eventing").glob("*.yaml"))
    names = []
    for crd in crds:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        names.append(yaml.safe_load(crd.read_text())["metadata"]["name"])

    def established() -> bool:
        items = json.loads(cluster.kubectl("get", "crd", *names, "-o", "json"))["items"]
        return all(
            any(
                c["type"] == "Established" and c["status"] == "True"
                for c in item.get("status", {}).get("conditions") or []
            )
            for item in items
        )

    waiting.wait_for(established, timeout=60, description="KEDA's CRDs established")
    certs = tmp_path / "keda-certs"
    issue_serving_certificate(
        certs, dns_names=["keda-operator.keda.svc", "localhost"], ip_addresses=["127.0.0.1"]
    )
    ca_dir = tmp_path / "keda-ca"
    ca_dir.mkdir()
    (ca_dir / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
    probe = local_cluster.free_port()
    log = tmp_path / "keda-operator.log"
    environment = {
        **os.environ,
        "WATCH_NAMESPACE": namespace,
        "KEDA_CLUSTER_OBJECT_NAMESPACE": namespace,
        "POD_NAMESPACE": namespace,
        "KUBECONFIG": str(cluster.kubeconfig),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(binary),
                "--leader-elect=false",
                "--enable-cert-rotation=false",
                "--enable-webhook-patching=false",
                f"--metrics-bind-address=127.0.0.1:{local_cluster.free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{probe}",
                f"--metrics-service-bind-address=127.0.0.1:{local_cluster.free_port()}",
                f"--cert-dir={certs}",
                f"--ca-dir={ca_dir}",
            ],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        waiting.wait_for(
            lambda: (
                process.poll() is None
                and httpx.get(f"http://127.0.0.1:{probe}/readyz", timeout=2).status_code == 200
            ),
            timeout=60,
            description="KEDA's operator ready",
            describe_last=lambda: log.read_text(errors="replace")[-3000:],
        )
        yield log
    finally:
        local_cluster.stop_pids([process.pid])


def _events(cluster: ClusterHandle, namespace: str) -> str:
    return cluster.kubectl("get", "events", "-n", namespace, "-o", "wide", check=False)


def test_real_keda_scales_a_keda_falapp_from_zero_and_back_through_the_gateway(
    cluster: ClusterHandle,
    api_client: k8s.ApiClient,
    namespace: str,
    release: dict[str, Any],  # noqa: F811
    keda: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    name = release["name"]
    _wait_ready(cluster, api_client, namespace, name)
    apps = k8s.AppsV1Api(api_client)
    ca, key = prepare_text_stats(api_client, namespace, name, tmp_path, description="e2e keda")
    falapp = yaml.safe_load((TEXT_STATS / "falapp.yaml").read_text())
    falapp["spec"]["scaler"] = "keda"
    falapp["spec"]["scaling"]["keepAlive"] = 5
    with podrunner.PodRunner(
        api_client, namespace=namespace, label_selector=RUNNER_SELECTOR, root=tmp_path / "pods"
    ) as pods:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(falapp))

        def scaled_object_ready() -> bool:
            item = json.loads(
                cluster.kubectl("get", "scaledobject", "-n", namespace, "-o", "json")
            )["items"]
            conditions = {
                c["type"]: c["status"] for obj in item for c in obj["status"]["conditions"]
            }
            return len(item) == 1 and conditions.get("Ready") == "True"

        waiting.wait_for(
            scaled_object_ready,
            timeout=90,
            description="KEDA to accept the ScaledObject (connected to the gateway's scaler)",
            describe_last=lambda: (
                cluster.kubectl("get", "scaledobject", "-n", namespace, "-o", "yaml", check=False)
                + keda.read_text(errors="replace")[-3000:]
            ),
        )
        (deployment,) = apps.list_namespaced_deployment(
            namespace, label_selector="kubefal.io/app=text-stats"
        ).items
        assert deployment.spec.replicas == 0

        result = subscribe_through_release(
            release,
            ca=ca,
            key=str(key),
            app_id=f"{namespace}/text-stats",
            arguments={"text": "one two two", "top": 1},
        )
        assert result.returncode == 0, (
            f"{result.stdout}\n{result.stderr}\n{podrunner.describe(pods)}\n"
            + _events(cluster, namespace)
            + keda.read_text(errors="replace")[-3000:]
        )
        assert json.loads(result.stdout.strip().splitlines()[-1]) == {
            "words": 3,
            "distinct_words": 2,
            "top_words": [["two", 2]],
        }
        # KEDA itself moved the Deployment from zero (its event), not the builtin actuator.
        assert "KEDAScaleTargetActivated" in _events(cluster, namespace)

        waiting.wait_for(
            lambda: (
                apps.read_namespaced_deployment(deployment.metadata.name, namespace).spec.replicas
                == 0
            ),
            timeout=120,
            description="KEDA to scale the runners back to zero after keepAlive",
            describe_last=lambda: _events(cluster, namespace),
        )
        assert "KEDAScaleTargetDeactivated" in _events(cluster, namespace)
