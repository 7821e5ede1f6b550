"""The whole of kubefal on one machine: operator, gateway, and runner processes for pods.

Used by the full-system e2e tests, ``make dev`` and the scaling benchmarks. On top of a
cluster (the local control plane, or any cluster by kubeconfig) it starts:

* the FalApp CRD (applied from ``crds/``);
* the gateway (``python -m kubefal_gateway``) with TLS from a throwaway CA, discovering
  FalApps, runner pods and API keys through the Kubernetes API;
* the operator (``python -m kubefal_operator``), pointed at the gateway's scaling stream so
  the builtin actuator sets replicas from the gateway's desired runner count;
* a :class:`~e2e.podrunner.PodRunner`, which runs each runner pod's container as a local
  process bound to the pod's loopback IP.

The real ``fal_client`` then reaches apps with the environment :meth:`System.client_env`
returns, exactly as it would reach a cluster's gateway.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from e2e import cluster as local_cluster
from e2e import operator_harness, podrunner
from kubefal_api import apikeys
from testkit import certs, waiting

REPO_ROOT = local_cluster.REPO_ROOT
RUNNER_SELECTOR = "kubefal.io/app,app.kubernetes.io/component=runner"


@dataclasses.dataclass
class Ports:
    queue: int
    run: int
    admin: int
    keda: int
    external_metrics: int


@dataclasses.dataclass
class System:
    """Handles on the running processes, and how a client reaches them."""

    kubeconfig: pathlib.Path
    workdir: pathlib.Path
    ca: pathlib.Path
    ports: Ports
    gateway: subprocess.Popen[bytes]
    operator: subprocess.Popen[bytes]
    pods: podrunner.PodRunner
    logs: list[pathlib.Path]
    rest_port: int = 0
    """The gateway's REST listener (files, realtime tokens, KV, /data)."""

    def client_env(self, key: str = "kf0000000000000000:unused") -> dict[str, str]:
        """Environment for a subprocess running the unmodified ``fal_client``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
        env.update(
            FAL_RUN_HOST=f"127.0.0.1:{self.ports.run}",
            FAL_QUEUE_RUN_HOST=f"127.0.0.1:{self.ports.queue}",
            SSL_CERT_FILE=str(self.ca),
            FAL_KEY=key,
            NO_PROXY="127.0.0.1,localhost",
        )
        if self.rest_port:
            # fal_client uploads and realtime() (kubefal_hosts hook), fal.toolkit uploads.
            env["KUBEFAL_REST_HOST"] = env["FAL_REST_HOST"] = f"127.0.0.1:{self.rest_port}"
        return env

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports.admin}{path}"

    def run_client(self, code: str, *, timeout: float = 120, key: str | None = None) -> str:
        """Run ``code`` with the real fal_client in a fresh interpreter; return its stdout."""
        env = self.client_env(key) if key else self.client_env()
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"fal_client failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def describe(self) -> str:
        return podrunner.describe(self.pods)


def _spawn(
    argv: Sequence[str], *, log: pathlib.Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def running_system(
    kubeconfig: pathlib.Path,
    *,
    workdir: pathlib.Path,
    namespaces: Sequence[str] = (),
    key_namespace: str | None = None,
    gateway_args: Sequence[str] = (),
    service_names: Sequence[str] = (),
    operator_env: Mapping[str, str] | None = None,
) -> Iterator[System]:
    """Start gateway, operator and pod runner; stop them all on exit.

    ``namespaces`` scopes the operator and the pod runner (all namespaces when empty).
    ``service_names`` are extra DNS names for the gateway's certificate, such as the
    ``<service>.<namespace>.svc`` an APIService makes the API server check.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    api_client = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    operator_harness.install_falapp_crd(api_client)
    ca, cert, key = certs.issue_serving_certificate(
        workdir / "tls", dns_names=["localhost", *service_names], ip_addresses=["127.0.0.1"]
    )
    ports = Ports(*(local_cluster.free_port() for _ in range(5)))
    rest_port = local_cluster.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "KUBEFAL_"))}
    env["KUBECONFIG"] = str(kubeconfig)
    gateway_log, operator_log = workdir / "gateway.log", workdir / "operator.log"
    gateway_argv = [
        sys.executable,
        "-m",
        "kubefal_gateway",
        "--host=127.0.0.1",
        f"--queue-port={ports.queue}",
        f"--run-port={ports.run}",
        f"--admin-port={ports.admin}",
        f"--keda-port={ports.keda}",
        f"--external-metrics-port={ports.external_metrics}",
        f"--tls-cert={cert}",
        f"--tls-key={key}",
        f"--store=sqlite:///{workdir / 'queue.db'}",
        f"--kubeconfig={kubeconfig}",
        f"--key-namespace={key_namespace or '*'}",
        f"--rest-port={rest_port}",
        f"--storage={workdir / 'files'}",
        f"--data-root={workdir / 'data'}",
        *gateway_args,
    ]
    gateway = _spawn(gateway_argv, log=gateway_log, env=env)
    operator_argv = [
        sys.executable,
        "-m",
        "kubefal_operator",
        f"--gateway-admin-url=http://127.0.0.1:{ports.admin}",
        f"--liveness=http://127.0.0.1:{local_cluster.free_port()}/healthz",
        *[f"--namespace={ns}" for ns in namespaces],
    ]
    operator_environment = env | {
        "KUBEFAL_OPERATOR_METRICS_HOST": "127.0.0.1",
        "KUBEFAL_OPERATOR_METRICS_PORT": str(local_cluster.free_port()),
        "KUBEFAL_RUNNER_FAL_REST_HOST": f"127.0.0.1:{rest_port}",
        "KUBEFAL_RUNNER_DATA_VOLUME": json.dumps({"hostPath": {"path": str(workdir / "data")}}),
        # as the chart: runner keys where this gateway reads keys, runners trust its CA
        "KUBEFAL_KEY_NAMESPACE": key_namespace or "*",
        "KUBEFAL_GATEWAY_CA_FILE": str(ca),
        **(operator_env or {}),
    }
    operator = _spawn(operator_argv, log=operator_log, env=operator_environment)
    pods = podrunner.PodRunner(
        api_client,
        namespace=namespaces[0] if len(namespaces) == 1 else None,
        label_selector=RUNNER_SELECTOR,
        root=workdir / "pods",
    )
    logs = [gateway_log, operator_log]
    system = System(
        kubeconfig, workdir, ca, ports, gateway, operator, pods, logs, rest_port=rest_port
    )
    try:

        def gateway_up() -> bool:
            if gateway.poll() is not None:
                raise AssertionError(f"the gateway exited:\n{gateway_log.read_text()[-3000:]}")
            return _ready(system.admin_url("/readyz"))

        waiting.wait_for(gateway_up, timeout=120, description="the gateway to be ready")
        pods.__enter__()
        yield system
    finally:
        pods.__exit__(None, None, None)
        local_cluster.stop_pids([operator.pid, gateway.pid], timeout=15)
        logs.extend(pods.logs())


def wait_for_runners(system: System, count: int, *, timeout: float = 120) -> None:
    """Until ``count`` runner processes run and answer ready."""

    def ready() -> bool:
        running = system.pods.running()
        if len(running) != count:
            return False
        return all(_ready(f"http://{p.ip}:8080/_kubefal/ready") for p in running.values())

    waiting.wait_for(
        ready,
        timeout=timeout,
        description=f"{count} ready runner processes",
        describe_last=system.describe,
    )


def create_key(
    api_client: k8s.ApiClient,
    *,
    key_namespace: str,
    namespaces: list[str],
    description: str = "e2e",
    revoked: bool = False,
) -> apikeys.ApiKey:
    """A key stored the way ``kubefal keys create`` stores it (a Secret with its hash)."""
    key = apikeys.generate_key()
    record = apikeys.new_record(key=key, namespaces=namespaces, description=description)
    if revoked:
        record = dataclasses.replace(record, revoked=True)
    k8s.CoreV1Api(api_client).create_namespaced_secret(
        key_namespace, apikeys.secret_manifest(record, namespace=key_namespace)
    )
    return key


def deploy_app(
    api_client: k8s.ApiClient,
    namespace: str,
    *,
    name: str,
    source: pathlib.Path,
    app: str,
    auth: str = "public",
    **spec: Any,
) -> None:
    """The FalApp ``name`` serving ``app.py::<app>`` from the file ``source``, shipped in the
    ConfigMap ``<name>-source`` (what ``kubefal deploy`` writes, without the CLI); ``spec``
    adds FalApp spec fields."""
    k8s.CoreV1Api(api_client).create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name=f"{name}-source"),
            data={"app.py": source.read_text()},
        ),
    )
    body = {
        "apiVersion": "kubefal.io/v1alpha1",
        "kind": "FalApp",
        "metadata": {"name": name},
        "spec": {
            "app": f"app.py::{app}",
            "source": {"configMapRef": {"name": f"{name}-source"}},
            "auth": auth,
            **spec,
        },
    }
    k8s.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "kubefal.io", "v1alpha1", namespace, "falapps", body
    )


EXTERNAL_METRICS_APISERVICE = "v1beta1.external.metrics.k8s.io"


def register_external_metrics(
    api_client: k8s.ApiClient, *, namespace: str, port: int, ca: pathlib.Path
) -> None:
    """Route ``external.metrics.k8s.io`` to a local server on ``port`` (TLS, signed by ``ca``).

    There is no kube-proxy here, so the APIService names an ``ExternalName`` Service for
    localhost; the server's certificate must cover ``kubefal-gateway.<namespace>.svc``.
    """
    k8s.CoreV1Api(api_client).create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kubefal-gateway"},
            "spec": {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [{"name": "https", "port": port, "targetPort": port}],
            },
        },
    )
    registration = k8s.CustomObjectsApi(api_client)
    unregister_external_metrics(api_client)
    registration.create_cluster_custom_object(
        "apiregistration.k8s.io",
        "v1",
        "apiservices",
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": EXTERNAL_METRICS_APISERVICE},
            "spec": {
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "service": {"namespace": namespace, "name": "kubefal-gateway", "port": port},
                "caBundle": base64.b64encode(ca.read_bytes()).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    )

    def available() -> bool:
        service = registration.get_cluster_custom_object(
            "apiregistration.k8s.io", "v1", "apiservices", EXTERNAL_METRICS_APISERVICE
        )
        conditions = service.get("status", {}).get("conditions", [])
        return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

    waiting.wait_for(available, timeout=90, description="the metrics APIService to be Available")


def unregister_external_metrics(api_client: k8s.ApiClient) -> None:
    """Remove the APIService, and wait until API discovery no longer lists the group.

    A group whose server is gone but still listed makes every discovery client (kopf's
    resource scanning, kubectl) wait on it, so the next test must not start before that.
    """
    with contextlib.suppress(ApiException):
        k8s.CustomObjectsApi(api_client).delete_cluster_custom_object(
            "apiregistration.k8s.io", "v1", "apiservices", EXTERNAL_METRICS_APISERVICE
        )

    def gone() -> bool:
        groups = k8s.ApisApi(api_client).get_api_versions().groups
        return all(group.name != "external.metrics.k8s.io" for group in groups)

    waiting.wait_for(gone, timeout=60, description="external.metrics.k8s.io to leave discovery")
