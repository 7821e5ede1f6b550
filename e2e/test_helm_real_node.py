"""``helm install`` of the chart with the built images, its pods real containers on the real node.

The chart is installed as a platform team would, from ``charts/kubefal`` with the images
``make images`` tagged; the operator, gateway and webhook pods are scheduled onto the real node
(nodeSelector and toleration through values) and must become Ready there as containers of the
kubefal image. A Helm post-renderer (``--post-renderer``, Helm's own hook for site-specific
changes) adapts the rendered objects to this sandbox, where only loopback may carry traffic:

* ``hostNetwork`` pods bound to 127.0.0.1 on free ports (the node's CNI has only ``loopback``);
* the API server at its 127.0.0.1 address (``KUBERNETES_SERVICE_HOST``/``PORT``), with the
  service-account token volume the ServiceAccount admission plugin would add (the local API
  server runs without that plugin);
* the operator reaches the gateway's admin API at 127.0.0.1, never through a ClusterIP;
* the webhook's Service is an ExternalName to localhost (the API server would dial a ClusterIP),
  one replica (two would share the host's port).

Runs with ``KUBEFAL_REAL_NODE=1`` after ``make images`` (``make test-real-node``).
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e import images, podrunner, realnode
from e2e.cluster import free_port
from e2e.conftest import ClusterHandle
from e2e.system import RUNNER_SELECTOR, create_key
from e2e.test_realnode import node  # noqa: F401  (the real-node fixture)
from kubefal_api import apikeys
from testkit import waiting
from tests.charthelm import CHART, Helm

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TEXT_STATS = images.REPO_ROOT / "examples" / "text-stats"

POST_RENDERER = '''\
"""Adapt the chart's rendered objects to a loopback-only sandbox (see the test's docstring)."""
import json, sys
import yaml

settings = json.loads(SETTINGS)


def set_env(container, name, value):
    env = container.setdefault("env", [])
    for item in env:
        if item["name"] == name:
            item.clear()
            item.update(name=name, value=value)
            return
    env.append({"name": name, "value": value})


documents = [d for d in yaml.safe_load_all(sys.stdin) if d]
for item in documents:
    kind, labels = item["kind"], item["metadata"].get("labels", {})
    component = labels.get("app.kubernetes.io/component")
    if kind == "Deployment":
        pod = item["spec"]["template"]["spec"]
        # Every Deployment of the chart on the real node (the values place the known ones).
        pod["nodeSelector"] = settings["node_selector"]
        pod["tolerations"] = [settings["toleration"]]
        pod["hostNetwork"] = True
        pod["dnsPolicy"] = "Default"
        pod["enableServiceLinks"] = False
        pod["automountServiceAccountToken"] = False
        pod.setdefault("volumes", []).append({
            "name": "kube-api-access",
            "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt",
                               "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                                            "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ]},
        })
        for container in pod["containers"]:
            container.setdefault("volumeMounts", []).append(
                {"name": "kube-api-access", "mountPath": settings["sa_dir"], "readOnly": True}
            )
            set_env(container, "KUBERNETES_SERVICE_HOST", "127.0.0.1")
            set_env(container, "KUBERNETES_SERVICE_PORT", str(settings["apiserver_port"]))
            for name, value in settings["env"].get(component, {}).items():
                set_env(container, name, value)
        if component == "webhook":
            item["spec"]["replicas"] = 1
    if kind == "Service" and component == "webhook":
        item["spec"] = {"type": "ExternalName", "externalName": "localhost",
                        "ports": [{"name": "https", "port": settings["webhook_port"]}]}
    if kind == "ValidatingWebhookConfiguration":
        for webhook in item["webhooks"]:
            webhook["clientConfig"]["service"]["port"] = settings["webhook_port"]
yaml.safe_dump_all(documents, sys.stdout, sort_keys=False)
'''


def _post_renderer(directory: pathlib.Path, settings: dict[str, Any]) -> pathlib.Path:
    script = directory / "loopback-post-renderer"
    body = POST_RENDERER.replace("SETTINGS", repr(json.dumps(settings)))
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def release_overrides() -> dict[str, Any]:
    """Extra chart values and container env by component; other modules override it."""
    return {"values": {}, "env": {}}


@pytest.fixture
def release(
    cluster: ClusterHandle,
    node: realnode.RealNode,  # noqa: F811
    namespace: str,
    falapp_crd: dict[str, Any],
    tmp_path: pathlib.Path,
    release_overrides: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    assert cluster.local is not None
    apiserver_port = int(cluster.local.server.rsplit(":", 1)[1])
    queue, run, admin, health, metrics, webhook, rest, grpc_port, webhook_metrics = (
        free_port() for _ in range(9)
    )
    placement = {
        "nodeSelector": {"kubernetes.io/hostname": realnode.NODE_NAME},
        "tolerations": [realnode.TOLERATION],
    }
    values = {
        "crds": {"enabled": False},
        "operator": {
            **placement,
            "watchNamespaces": [namespace],
            "healthPort": health,
            "metricsPort": metrics,
        },
        "gateway": {
            **placement,
            "ports": {"queue": queue, "run": run, "admin": admin, "rest": rest},
            "store": {"sqlite": {"persistence": {"enabled": False}}},
            "storage": {"embedded": {"persistence": {"enabled": False}}},
        },
        "controlPlane": {**placement, "port": grpc_port},
        "webhook": {
            **placement,
            "port": webhook,
            "metricsPort": webhook_metrics,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        },
    }
    settings = {
        "sa_dir": SERVICE_ACCOUNT_DIR,
        "node_selector": placement["nodeSelector"],
        "toleration": realnode.TOLERATION,
        "apiserver_port": apiserver_port,
        "webhook_port": webhook,
        "env": {
            "gateway": {"KUBEFAL_GATEWAY_HOST": "127.0.0.1"},
            "webhook": {
                "KUBEFAL_WEBHOOK_HOST": "127.0.0.1",
                "KUBEFAL_WEBHOOK_METRICS_HOST": "127.0.0.1",
            },
            "controlplane": {
                "KUBEFAL_CONTROLPLANE_HOST": "127.0.0.1",
                "KUBEFAL_GATEWAY_ADMIN_URL": f"http://127.0.0.1:{admin}",
            },
            "operator": {"KUBEFAL_GATEWAY_ADMIN_URL": f"http://127.0.0.1:{admin}"},
        },
    }
    values = _merge(values, release_overrides["values"])
    settings["env"] = _merge(settings["env"], release_overrides["env"])
    helm = Helm(binary=cluster.testbin / "helm", kubeconfig=cluster.kubeconfig)
    name = f"kf-{uuid.uuid4().hex[:6]}"
    post_renderer = _post_renderer(tmp_path, settings)
    install = helm.run(
        "install",
        name,
        str(CHART),
        f"--namespace={namespace}",
        f"--post-renderer={post_renderer}",
        values=values,
    )
    assert install.returncode == 0, install.stderr
    try:
        yield {
            "name": name,
            "helm": helm,
            "values": values,
            "post_renderer": post_renderer,
            "ports": {"queue": queue, "run": run, "admin": admin},
        }
    finally:
        helm.run("uninstall", name, f"--namespace={namespace}", "--wait", "--timeout=120s")


def subscribe_through_release(
    release: dict[str, Any], *, ca: pathlib.Path, key: str, app_id: str, arguments: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """The real fal_client's `subscribe(app_id, arguments)` through the release's gateway, in a
    fresh interpreter with only the FAL_* lines a user would set; prints the result as JSON."""
    ports = release["ports"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env.update(
        FAL_RUN_HOST=f"127.0.0.1:{ports['run']}",
        FAL_QUEUE_RUN_HOST=f"127.0.0.1:{ports['queue']}",
        SSL_CERT_FILE=str(ca),
        FAL_KEY=str(key),
        NO_PROXY="127.0.0.1,localhost",
    )
    code = (
        "import json, fal_client\n"
        f"r = fal_client.subscribe({app_id!r}, arguments={arguments!r})\n"
        "print(json.dumps(r))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )


def prepare_text_stats(
    api_client: k8s.ApiClient,
    namespace: str,
    release_name: str,
    tmp_path: pathlib.Path,
    *,
    description: str,
) -> tuple[pathlib.Path, apikeys.ApiKey]:
    """What a user sets up before calling the examples/text-stats app through the release: the
    gateway's CA (from the chart's generated TLS Secret) in a file, an API key for ``namespace``
    and the app's source ConfigMap; returns (ca.crt, key)."""
    core = k8s.CoreV1Api(api_client)
    tls = core.read_namespaced_secret(f"{release_name}-kubefal-gateway-tls", namespace)
    ca = tmp_path / "ca.crt"
    ca.write_bytes(base64.b64decode(tls.data["ca.crt"]))
    key = create_key(
        api_client, key_namespace=namespace, namespaces=[namespace], description=description
    )
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name="text-stats-source"),
            data={"app.py": (TEXT_STATS / "app.py").read_text()},
        ),
    )
    return ca, key


def _pods(api_client: k8s.ApiClient, namespace: str, release: str) -> list[k8s.V1Pod]:
    return list(
        k8s.CoreV1Api(api_client)
        .list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={release}")
        .items
    )


def _wait_ready(
    cluster: ClusterHandle, api_client: k8s.ApiClient, namespace: str, name: str
) -> None:
    def all_ready() -> bool:
        pods = _pods(api_client, namespace, name)
        components = {p.metadata.labels["app.kubernetes.io/component"] for p in pods}
        return components >= {"operator", "gateway", "webhook"} and all(
            p.status.container_statuses and all(c.ready for c in p.status.container_statuses)
            for p in pods
        )

    waiting.wait_for(
        all_ready,
        timeout=180,
        description="the operator, gateway and webhook pods Ready on the real node",
        describe_last=lambda: (
            cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False)
            + "\n".join(
                cluster.kubectl("logs", "-n", namespace, p.metadata.name, "--tail=30", check=False)
                for p in _pods(api_client, namespace, name)
            )
        ),
    )


def test_helm_install_runs_the_control_plane_as_real_containers_on_the_real_node(
    cluster: ClusterHandle,
    node: realnode.RealNode,  # noqa: F811
    api_client: k8s.ApiClient,
    namespace: str,
    release: dict[str, Any],
) -> None:
    _wait_ready(cluster, api_client, namespace, release["name"])
    containers = set(node.ctr("containers", "list", "--quiet").split())
    for pod in _pods(api_client, namespace, release["name"]):
        assert pod.spec.node_name == realnode.NODE_NAME
        (status,) = pod.status.container_statuses
        assert status.image == images.image_ref("kubefal")
        runtime, _, container_id = status.container_id.partition("://")
        assert runtime == "containerd" and container_id in containers


def test_fal_client_gets_a_result_through_the_gateway_container_of_the_release(
    cluster: ClusterHandle,
    api_client: k8s.ApiClient,
    namespace: str,
    release: dict[str, Any],
    tmp_path: pathlib.Path,
) -> None:
    """A CPU FalApp applied next to the release: the operator in its container renders the
    runner Deployment, whose pod lands on a kwok CPU node (the e2e pod runner plays its
    container, bound to the pod's 127.64.x.y address), and the unmodified fal_client, trusting
    the chart's generated CA, gets the app's result from the gateway container."""
    name = release["name"]
    _wait_ready(cluster, api_client, namespace, name)
    ca, key = prepare_text_stats(api_client, namespace, name, tmp_path, description="e2e helm")
    with podrunner.PodRunner(
        api_client, namespace=namespace, label_selector=RUNNER_SELECTOR, root=tmp_path / "pods"
    ) as pods:
        cluster.kubectl("apply", "-n", namespace, "-f", str(TEXT_STATS / "falapp.yaml"))
        result = subscribe_through_release(
            release,
            ca=ca,
            key=str(key),
            app_id=f"{namespace}/text-stats",
            arguments={"text": "to be or not to be", "top": 2},
        )
        assert result.returncode == 0, (
            f"{result.stdout}\n{result.stderr}\n{podrunner.describe(pods)}\n"
            + cluster.kubectl("get", "pods,falapps", "-n", namespace, "-o", "wide", check=False)
        )
        assert json.loads(result.stdout.strip().splitlines()[-1]) == {
            "words": 6,
            "distinct_words": 4,
            "top_words": [["to", 2], ["be", 2]],
        }
        runner_pods = k8s.CoreV1Api(api_client).list_namespaced_pod(
            namespace, label_selector=RUNNER_SELECTOR
        )
        assert {p.spec.node_name for p in runner_pods.items} <= {"cpu-0", "cpu-1"}


def _pod_ids(api_client: k8s.ApiClient, namespace: str, name: str) -> dict[str, str]:
    return {
        p.metadata.labels["app.kubernetes.io/component"]: p.metadata.uid
        for p in _pods(api_client, namespace, name)
        if p.metadata.deletion_timestamp is None
    }


def test_helm_upgrade_rolls_only_the_changed_component_and_uninstall_leaves_nothing(
    cluster: ClusterHandle,
    node: realnode.RealNode,  # noqa: F811
    api_client: k8s.ApiClient,
    namespace: str,
    release: dict[str, Any],
) -> None:
    name, helm = release["name"], release["helm"]
    _wait_ready(cluster, api_client, namespace, name)
    before = _pod_ids(api_client, namespace, name)
    containers_before = set(node.ctr("containers", "list", "--quiet").split())
    release_containers = {
        s.container_id.partition("://")[2]
        for p in _pods(api_client, namespace, name)
        for s in p.status.container_statuses
    }
    assert release_containers <= containers_before
    upgrade = helm.run(
        "upgrade",
        name,
        str(CHART),
        f"--namespace={namespace}",
        "--reuse-values",
        "--set=gateway.logLevel=debug",
        f"--post-renderer={release['post_renderer']}",
    )
    assert upgrade.returncode == 0, upgrade.stderr

    def rolled() -> dict[str, str] | None:
        now = _pod_ids(api_client, namespace, name)
        return now if now.keys() == before.keys() and now["gateway"] != before["gateway"] else None

    after = waiting.wait_for(rolled, timeout=120, description="a new gateway pod")
    _wait_ready(cluster, api_client, namespace, name)
    assert after["operator"] == before["operator"] and after["webhook"] == before["webhook"]
    gateway = next(
        p for p in _pods(api_client, namespace, name) if p.metadata.uid == after["gateway"]
    )
    env = {e.name: e.value for e in gateway.spec.containers[0].env}
    assert env["KUBEFAL_GATEWAY_LOG_LEVEL"] == "debug"
    (status,) = gateway.status.container_statuses
    assert status.container_id.partition("://")[2] not in containers_before
    release_containers.add(status.container_id.partition("://")[2])

    uninstall = helm.run("uninstall", name, f"--namespace={namespace}", "--wait")
    assert uninstall.returncode == 0, uninstall.stderr
    kinds = (
        "all,secret,configmap,serviceaccount,role,rolebinding,clusterrole,clusterrolebinding,"
        "validatingwebhookconfiguration,poddisruptionbudget,networkpolicy,pvc,apiservice"
    )

    def left() -> list[str]:
        return cluster.kubectl(
            "get",
            kinds,
            "--all-namespaces",
            "-l",
            f"app.kubernetes.io/instance={name}",
            "-o",
            "name",
        ).split()

    # Without crds.enabled and with the queue on an emptyDir, the chart keeps nothing (its pods
    # go after their Deployments, when their containers have stopped).
    waiting.wait_for(
        lambda: left() == [],
        timeout=120,
        description="nothing of the release left",
        describe_last=lambda: "\n".join(left()),
    )
    waiting.wait_for(
        lambda: not (release_containers & set(node.ctr("containers", "list", "--quiet").split())),
        timeout=90,
        description="the release's containers gone from containerd",
    )
