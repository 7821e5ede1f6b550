"""The operator as it ships, run against the e2e control plane, and the API calls its tests use.

Shared by ``e2e/test_operator.py``, ``e2e/test_operator_scalers.py`` and
``bench/actuator.py``: a ``python -m kubefal_operator`` child process (optionally scoped to
namespaces and pointed at a gateway), the committed FalApp CRD installed and served, typed
helpers over the kubernetes client, and :class:`ScalingStream`, a real server-sent-events
endpoint speaking the gateway's scaling wire format for the builtin actuator to follow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from e2e import cluster as local_cluster
from kubefal_api import crds, machines, naming, v1alpha1
from testkit import waiting

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 120.0


@dataclasses.dataclass
class OperatorProcess:
    """``python -m kubefal_operator`` as a child process with its log in a file."""

    kubeconfig: pathlib.Path
    log_path: pathlib.Path
    catalogue_namespace: str
    metrics_port: int = dataclasses.field(default_factory=local_cluster.free_port)
    liveness_port: int = dataclasses.field(default_factory=local_cluster.free_port)
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    """Extra environment variables (on top of the test process's and the defaults below)."""
    arguments: tuple[str, ...] = ()
    """Extra command-line arguments (``-n <namespace>``, ``--gateway-admin-url ...``)."""
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBEFAL_OPERATOR_METRICS_HOST": "127.0.0.1",
            "KUBEFAL_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "KUBEFAL_OPERATOR_NAMESPACE": self.catalogue_namespace,
            "KUBEFAL_MACHINES_NAMESPACE": self.catalogue_namespace,
            **self.environment,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kubefal_operator",
                    "--liveness",
                    f"http://127.0.0.1:{self.liveness_port}/healthz",
                    *self.arguments,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        waiting.wait_for(
            self.healthy,
            timeout=TIMEOUT,
            description="the operator's liveness endpoint",
            describe_last=self.log_tail,
        )

    def healthy(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.log_tail()}")
        return _http_ok(f"http://127.0.0.1:{self.liveness_port}/healthz")

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies or the OOM killer strikes."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.process = None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def install_falapp_crd(api_client: k8s.ApiClient) -> dict[str, Any]:
    """Install (or update) the committed FalApp CRD; wait until its endpoint serves."""
    crd = yaml.safe_load((REPO_ROOT / "crds" / crds.CRD_FILENAME).read_text(encoding="utf-8"))
    extensions = k8s.ApiextensionsV1Api(api_client)
    extensions.patch_custom_resource_definition(
        name=v1alpha1.CRD_NAME,
        body=crd,
        field_manager="kubefal-e2e",
        force=True,
        _content_type="application/apply-patch+yaml",
    )

    def established() -> bool:
        current = api_client.sanitize_for_serialization(  # type: ignore[no-untyped-call]
            extensions.read_custom_resource_definition(v1alpha1.CRD_NAME)
        )
        reported = {c["type"]: c["status"] for c in current["status"].get("conditions") or []}
        return reported.get("Established") == "True" and reported.get("NamesAccepted") == "True"

    waiting.wait_for(established, timeout=TIMEOUT, description="the FalApp CRD Established")
    objects = k8s.CustomObjectsApi(api_client)
    waiting.wait_for(
        lambda: objects.list_cluster_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL, limit=1
        ),
        timeout=TIMEOUT,
        description="the falapps endpoint to serve",
    )
    return crd


@dataclasses.dataclass
class Api:
    client: k8s.ApiClient
    objects: k8s.CustomObjectsApi
    apps: k8s.AppsV1Api
    core: k8s.CoreV1Api
    networking: k8s.NetworkingV1Api
    policy: k8s.PolicyV1Api

    @classmethod
    def of(cls, api_client: k8s.ApiClient) -> Api:
        """Every API group the operator tests read, on one client."""
        return cls(
            client=api_client,
            objects=k8s.CustomObjectsApi(api_client),
            apps=k8s.AppsV1Api(api_client),
            core=k8s.CoreV1Api(api_client),
            networking=k8s.NetworkingV1Api(api_client),
            policy=k8s.PolicyV1Api(api_client),
        )

    def create_app(self, namespace: str, manifest: dict[str, Any]) -> Any:
        created = self.objects.create_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, manifest
        )
        return created

    def app(self, namespace: str, name: str) -> Any:
        found = self.objects.get_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name
        )
        return found

    def patch_app(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.objects.patch_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name, patch
        )

    def delete_app(self, namespace: str, name: str) -> None:
        self.objects.delete_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name
        )

    def plain(self, obj: object) -> Any:
        """A client model as the plain JSON dict the API sent (camelCase keys)."""
        return self.client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]

    def deployment(self, namespace: str, name: str) -> Any:
        try:
            return self.plain(self.apps.read_namespaced_deployment(name, namespace))
        except k8s.ApiException as error:
            if error.status == 404:
                return None
            raise

    def runner_container(self, namespace: str, name: str) -> Any:
        deployment = self.deployment(namespace, name)
        return deployment["spec"]["template"]["spec"]["containers"][0] if deployment else None

    def runner_pods(self, namespace: str, name: str) -> list[Any]:
        listing = self.plain(
            self.core.list_namespaced_pod(namespace, label_selector=f"{naming.LABEL_APP}={name}")
        )
        return [pod for pod in listing["items"] if not pod["metadata"].get("deletionTimestamp")]

    def scheduled_nodes(self, namespace: str, name: str) -> list[str]:
        pods = self.runner_pods(namespace, name)
        return [str(pod["spec"]["nodeName"]) for pod in pods if pod["spec"].get("nodeName")]

    def node_products(self) -> dict[str, str]:
        nodes = self.plain(self.core.list_node())["items"]
        return {
            str(node["metadata"]["name"]): str(
                (node["metadata"].get("labels") or {}).get(machines.GPU_PRODUCT_LABEL, "")
            )
            for node in nodes
        }

    def free_gpus(self, product: str) -> int:
        """Free nvidia.com/gpu on every node of ``product``, counting all namespaces' pods."""
        nodes = [name for name, found in self.node_products().items() if found == product]
        used = dict.fromkeys(nodes, 0)
        for pod in self.plain(self.core.list_pod_for_all_namespaces())["items"]:
            node = pod["spec"].get("nodeName")
            if node not in used or pod.get("status", {}).get("phase") in {"Succeeded", "Failed"}:
                continue
            for container in pod["spec"]["containers"]:
                limits = (container.get("resources") or {}).get("limits") or {}
                used[node] += int(limits.get(machines.GPU_RESOURCE, 0))
        return sum(8 - count for count in used.values())

    def names(self, listing: object) -> list[str]:
        return sorted(str(item["metadata"]["name"]) for item in self.plain(listing)["items"])


# --- a scaling stream as the gateway serves it ----------------------------------------------


class ScalingStream:
    """``GET /_kubefal/scaling/watch`` on 127.0.0.1: every app's last signal on connect,
    then each published signal as it comes, with keep-alive comments in between."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.listeners: list[queue.Queue[dict[str, Any] | None]] = []
        self.lock = threading.Lock()
        stream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path != "/_kubefal/scaling/watch":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
                with stream.lock:
                    for known in stream.latest.values():
                        inbox.put(known)
                    stream.listeners.append(inbox)
                try:
                    while True:
                        try:
                            signal = inbox.get(timeout=5)
                        except queue.Empty:
                            self.wfile.write(b": keep-alive\n\n")
                            self.wfile.flush()
                            continue
                        if signal is None:
                            return
                        payload = json.dumps(signal).encode()
                        self.wfile.write(b"event: scaling\ndata: " + payload + b"\n\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                finally:
                    with stream.lock:
                        stream.listeners.remove(inbox)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def subscribers(self) -> int:
        with self.lock:
            return len(self.listeners)

    def publish(
        self,
        namespace: str,
        name: str,
        *,
        desired: int,
        queued: int = 0,
        in_flight: int = 0,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        ready = [detail for detail in details or [] if detail["ready"]]
        signal: dict[str, Any] = {
            "app": naming.app_id(namespace, name),
            "queued": queued,
            "inFlight": in_flight,
            "readyRunners": len(ready),
            "idleRunners": sum(1 for detail in ready if detail["inFlight"] == 0),
            "runners": len(details or []),
            "desiredRunners": desired,
        }
        if details is not None:
            signal["runnerDetails"] = details
        with self.lock:
            self.latest[signal["app"]] = signal
            for inbox in self.listeners:
                inbox.put(signal)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.lock:
            for inbox in self.listeners:
                inbox.put(None)
        self.server.shutdown()
        self.server.server_close()


def fresh_namespace(api_client: k8s.ApiClient, *, prefix: str) -> Iterator[str]:
    """A new namespace named ``<prefix><random>`` for as long as the generator runs (a fixture
    body: ``yield from``); deleted afterwards."""
    core = k8s.CoreV1Api(api_client)
    name = f"{prefix}{uuid.uuid4().hex[:5]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def served_namespaces(
    request: pytest.FixtureRequest, api_client: k8s.ApiClient, *, prefix: str
) -> Iterator[list[str]]:
    """One fresh namespace per test of the requesting module, created before its operator.

    The operator is then given their exact names, so it lists them at start-up instead of
    having to notice them appear through a namespace watch (in the full suite, kopf with
    namespace globs sometimes never started its watchers for a namespace created after it).
    """
    tests = [item for item in request.session.items if item.module is request.module]
    core = k8s.CoreV1Api(api_client)
    names = [f"{prefix}{index}-{uuid.uuid4().hex[:5]}" for index in range(len(tests))]
    for name in names:
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    for name in names:
        waiting.wait_for(
            lambda name=name: core.read_namespaced_service_account("default", name),
            timeout=60,
            description=f"the default ServiceAccount in {name}",
        )
    yield list(names)
    for name in names:  # those no test took; the others went with their test
        with contextlib.suppress(k8s.ApiException):
            core.delete_namespace(name, propagation_policy="Background")


def take_namespace(served: list[str], api_client: k8s.ApiClient) -> Iterator[str]:
    """The next pre-created namespace for one test; deleted when the test ends, so what the
    test ran (GPU runners above all) does not hold capacity the next test needs."""
    name = served.pop(0)
    yield name
    k8s.CoreV1Api(api_client).delete_namespace(name, propagation_policy="Background")


def exact_namespace_arguments(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(argument for name in names for argument in ("-n", name))
