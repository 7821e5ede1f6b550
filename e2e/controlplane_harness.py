"""The control plane as it ships, run against the e2e API server, and what its tests share.

``python -m kubefal_controlplane`` runs as a child process with TLS from the same local CA
``kubefal run`` makes (``kubefal_cli.localca``); the real ``fal`` package talks to it, in
process (``SyncServerlessClient``) or as the ``fal`` CLI in a subprocess, configured only by
the environment a user would set: ``FAL_GRPC_HOST``, ``FAL_KEY`` and
``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``. API keys are Secrets written exactly as
``kubefal keys create`` writes them; runner pods are real pods on the fake (kwok) nodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from kubernetes import client as k8s

from e2e import cluster as local_cluster
from e2e import operator_harness
from e2e import system as whole
from e2e.conftest import ClusterHandle
from kubefal_api import apikeys, naming, v1alpha1
from kubefal_cli import localca
from testkit import waiting

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
FAL_CLI = pathlib.Path(sys.executable).parent / "fal"
BUNDLED = REPO_ROOT / "tests" / "cli" / "apps" / "bundled"
"""An app with app_files, a local package and modules beside it (tests/cli/apps/bundled)."""
BUNDLED_ANSWER = {
    "greeting": "hello from helpers",
    "package": "localpkg (sub.inner)",
    "text": "notes for the app\n",
    "binary": [0, 1, 2, 255, 254],
    "skipped": False,
    "relative": "notes for the app\n",
}
"""What ``BUNDLED``'s app answers on a runner that got every file it reads."""


@dataclasses.dataclass
class ControlPlaneProcess:
    """``python -m kubefal_controlplane`` as a child process with its log in a file."""

    kubeconfig: pathlib.Path
    tls: localca.LocalTls
    key_namespace: str
    log_path: pathlib.Path
    port: int = dataclasses.field(default_factory=local_cluster.free_port)
    arguments: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"localhost:{self.port}"

    def start(self) -> ControlPlaneProcess:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("KUBEFAL_") and name != "KUBECONFIG"
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kubefal_controlplane",
                    "--port",
                    str(self.port),
                    "--tls-cert",
                    str(self.tls.server_cert),
                    "--tls-key",
                    str(self.tls.server_key),
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--key-namespace",
                    self.key_namespace,
                    *self.arguments,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        credentials = grpc.ssl_channel_credentials(self.tls.ca_bundle.read_bytes())
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"control plane exited with {self.process.returncode}:\n"
                    + self.log_path.read_text(errors="replace")[-4000:]
                )
            with grpc.secure_channel(self.host, credentials) as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=1.0)
                    return
                except grpc.FutureTimeoutError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError("control plane did not accept TLS connections in time")

    def stop(self) -> None:
        if self.process is not None:
            local_cluster.stop_pids([self.process.pid])
            self.process = None


def client_environment(
    plane: ControlPlaneProcess, *, key: apikeys.ApiKey | None, home: pathlib.Path
) -> dict[str, str]:
    """Only what a user sets: the host, the key and the CA bundle (plus a clean HOME)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FAL_", "KUBEFAL_", "GRPC_", "ISOLATE_")) and name != "KUBECONFIG"
    }
    env.update(
        {
            "HOME": str(home),
            "FAL_GRPC_HOST": plane.host,
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(plane.tls.ca_bundle),
            "COLUMNS": "250",
            "NO_COLOR": "1",
        }
    )
    if key is not None:
        env["FAL_KEY"] = str(key)
    return env


@contextlib.contextmanager
def fal_following(
    *args: str, env: dict[str, str], merge_stderr: bool = False
) -> Iterator[Callable[[], list[str]]]:
    """The ``fal`` CLI following something (``fal runners logs --follow``) in the background;
    yields a function that returns the lines it printed so far, read without blocking (it
    raises once fal has exited); fal is terminated when the block ends."""
    follower = subprocess.Popen(
        [str(FAL_CLI), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
    )
    printed: list[str] = []
    assert follower.stdout is not None
    stdout = follower.stdout
    os.set_blocking(stdout.fileno(), False)

    def lines() -> list[str]:
        if follower.poll() is not None:
            raise AssertionError(f"fal exited with {follower.returncode}: {printed}")
        while line := stdout.readline():
            printed.append(line)
        return printed

    try:
        yield lines
    finally:
        follower.terminate()
        follower.wait(timeout=30)


def run_fal(
    plane: ControlPlaneProcess,
    *args: str,
    key: apikeys.ApiKey | None,
    home: pathlib.Path,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """The unmodified ``fal`` CLI as a subprocess."""
    return subprocess.run(
        [str(FAL_CLI), *args],
        env=client_environment(plane, key=key, home=home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


create_key = whole.create_key


def create_falapp(
    api_client: k8s.ApiClient, *, namespace: str, name: str, **spec: Any
) -> dict[str, Any]:
    body = {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"app": "app.py::App", **spec},
    }
    created: dict[str, Any] = k8s.CustomObjectsApi(api_client).create_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, body
    )
    return created


def get_falapp(api_client: k8s.ApiClient, *, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = k8s.CustomObjectsApi(api_client).get_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name
    )
    return found


def create_runner_pod(
    api_client: k8s.ApiClient,
    *,
    namespace: str,
    app: str,
    pod: str,
    schedulable: bool = True,
) -> dict[str, Any]:
    """A runner pod labelled as the operator labels them; on a kwok node it becomes ready.

    ``schedulable=False`` asks for a node no fake node matches, so the pod stays Pending.
    """
    spec: dict[str, Any] = {
        "containers": [{"name": naming.RUNNER_CONTAINER, "image": "kubefal/runner:e2e"}],
        "tolerations": [
            {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
        ],
        "nodeSelector": {"type": "kwok"} if schedulable else {"kubefal.io/no-such-node": "x"},
    }
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod, "namespace": namespace, "labels": naming.child_labels(app)},
        "spec": spec,
    }
    core = k8s.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, body)
    return body


def wait_pod_ready(api_client: k8s.ApiClient, *, namespace: str, pod: str) -> None:
    core = k8s.CoreV1Api(api_client)

    def ready() -> bool:
        status = core.read_namespaced_pod(pod, namespace).status
        return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])

    waiting.wait_for(ready, timeout=60, description=f"pod {namespace}/{pod} ready")


def call_app(
    running: whole.System,
    app: str,
    *,
    key: apikeys.ApiKey,
    arguments: dict[str, Any] | None = None,
    method: str = "run",
    timeout: float = 180,
) -> Any:
    """What the real ``fal_client`` (``run`` or ``subscribe``) answers for ``app``, decoded."""
    output = running.run_client(
        "import fal_client, json\n"
        f"print(json.dumps(fal_client.{method}({app!r}, arguments={arguments or {}!r})))\n",
        key=str(key),
        timeout=timeout,
    )
    return json.loads(output.strip().splitlines()[-1])


# ---- fixtures (import them into a test module to use them) ----------------------------------


@pytest.fixture(scope="module")
def cp_tls(tmp_path_factory: pytest.TempPathFactory) -> localca.LocalTls:
    """The session's local CA (one for all modules: ``localca.ensure`` reuses it).

    In-process gRPC clients trust it through ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``, which gRPC
    reads once per process.
    """
    tls = localca.ensure(tmp_path_factory.getbasetemp() / "controlplane-ca")
    # Always this session's file: a machine that sets the variable already (to the system
    # bundle, say) would otherwise leave the in-process clients distrusting the control plane.
    shared = tmp_path_factory.getbasetemp() / "controlplane-roots.pem"
    shared.write_bytes(tls.ca_bundle.read_bytes())
    os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(shared)
    return tls


@pytest.fixture(scope="module")
def key_namespace(api_client: k8s.ApiClient) -> Iterator[str]:
    """A namespace of its own for the module's API-key Secrets."""
    yield from operator_harness.fresh_namespace(api_client, prefix="e2e-cp-keys-")


@pytest.fixture(scope="module")
def plane(
    cluster: ClusterHandle,
    falapp_crd: dict[str, Any],
    cp_tls: localca.LocalTls,
    key_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ControlPlaneProcess]:
    log_path = tmp_path_factory.mktemp("controlplane-log") / "controlplane.log"
    process = ControlPlaneProcess(
        kubeconfig=cluster.kubeconfig, tls=cp_tls, key_namespace=key_namespace, log_path=log_path
    ).start()
    yield process
    process.stop()


@pytest.fixture
def key(api_client: k8s.ApiClient, key_namespace: str, namespace: str) -> apikeys.ApiKey:
    """An API key for the test's namespace, stored as ``kubefal keys create`` stores it."""
    return create_key(api_client, key_namespace=key_namespace, namespaces=[namespace])


@pytest.fixture
def running(
    cluster: ClusterHandle,
    namespace: str,
    key_namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> Iterator[whole.System]:
    """The whole of kubefal (gateway, operator, runner pods as local processes) for one test."""
    with whole.running_system(
        cluster.kubeconfig,
        workdir=tmp_path / "system",
        namespaces=[namespace],
        key_namespace=key_namespace,
    ) as system:
        e2e_logs.extend(system.logs)
        yield system
        e2e_logs.extend(system.pods.logs())


@pytest.fixture
def deploying_plane(
    cluster: ClusterHandle,
    running: whole.System,
    cp_tls: localca.LocalTls,
    key_namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> Iterator[ControlPlaneProcess]:
    """A control plane whose deploys reach ``running``'s gateway and name its public URLs."""
    with plane_for_test(
        cluster,
        tls=cp_tls,
        key_namespace=key_namespace,
        tmp_path=tmp_path,
        e2e_logs=e2e_logs,
        arguments=(*gateway_arguments(running), "--deploy-timeout=180"),
    ) as process:
        yield process


def gateway_arguments(system: whole.System, *, relay_files: bool = False) -> tuple[str, ...]:
    """The control plane's flags that point it at ``system``'s gateway: its admin listener (each
    runner's in-flight requests), the public URLs a deploy prints and, with ``relay_files``, the
    REST listener ``/files/*`` is relayed to."""
    relay = (
        (
            f"--gateway-rest-url=https://127.0.0.1:{system.rest_port}",
            f"--gateway-rest-ca={system.ca}",
        )
        if relay_files
        else ()
    )
    return (
        f"--gateway-admin-url=http://127.0.0.1:{system.ports.admin}",
        *relay,
        f"--public-run-url=https://127.0.0.1:{system.ports.run}",
        f"--public-queue-url=https://127.0.0.1:{system.ports.queue}",
    )


@contextlib.contextmanager
def plane_for_test(
    cluster: ClusterHandle,
    *,
    tls: localca.LocalTls,
    key_namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
    arguments: tuple[str, ...] = (),
) -> Iterator[ControlPlaneProcess]:
    """A control plane process for one test, its log kept with the test's e2e logs."""
    log_path = tmp_path / "controlplane.log"
    e2e_logs.append(log_path)
    process = ControlPlaneProcess(
        kubeconfig=cluster.kubeconfig,
        tls=tls,
        key_namespace=key_namespace,
        log_path=log_path,
        arguments=arguments,
    ).start()
    try:
        yield process
    finally:
        process.stop()
