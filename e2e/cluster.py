"""A real Kubernetes control plane on this machine, without Docker.

kubefal's behaviour lives in the Kubernetes API: schema and CEL validation, the status
subresource, watches, garbage collection and the scheduling of ``nvidia.com/gpu``. Mocks
miss all of that, so the e2e suite, ``make cluster-up`` and the benchmarks start the real
thing from the binaries ``make testbin`` builds (``e2e/testbin.sh``):

* etcd, kube-apiserver (aggregation layer enabled, for ``external.metrics.k8s.io``),
  kube-controller-manager (every default controller: garbage collector, HPA, ...),
  kube-scheduler, and kwok, which plays kubelet for fake nodes and gives pods IPs in
  a /16 of 127.64.0.0/10 (one per local cluster: ``claim_pod_cidr``) so that a test can bind a
  process to "the pod", and serves their kubelet API over TLS, so that pod logs reach the API
  server (``kubectl logs``, ``fal runners logs``) from the file each pod's kwok ``Logs`` object
  names (``e2e/podrunner.py`` writes its processes' output there in the CRI log format);
* fake nodes: two CPU nodes and GPU nodes labelled like GPU Feature Discovery does
  (``nvidia.com/gpu.product``), tainted ``nvidia.com/gpu=present:NoSchedule`` as GPU
  node pools usually are, with region and zone labels.

Everything binds to 127.0.0.1 on ports the OS hands out. Each component logs to its own
file (kept for failure reports) and is stopped by PID. ``python -m e2e.cluster up`` leaves
the control plane running in the background and records it in ``state.json`` beside the
kubeconfig; ``down`` stops it; the pytest session fixture reuses a running one.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import os
import pathlib
import random
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from e2e import realnode
from testkit import certs, claims, ports, processes

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".kubefal" / "cluster"
POD_CIDR = "127.64.0.0/16"
"""Pod IPs kwok hands out on a cluster this module did not start (KUBEFAL_E2E_KUBECONFIG)."""
POD_CIDR_CLAIMS = pathlib.Path("/tmp/kubefal-pod-cidrs")
"""One file per /16 of 127.64.0.0/10 a local cluster's kwok uses, holding that kwok's PID."""
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
KWOK_LOGS_CRD = REPO_ROOT / "e2e" / "crds" / "kwok.x-k8s.io" / "kwok.x-k8s.io_logs.yaml"
"""kwok's ``Logs``: which file holds a pod's container log, for its kubelet API (pods/log)."""


@dataclasses.dataclass(frozen=True)
class FakeNode:
    """One kwok node: its name, GPU product (None for CPU nodes) and placement labels."""

    name: str
    region: str
    zone: str
    gpu_product: str | None = None
    gpus: int = 0
    cpu: str = "192"
    memory: str = "2Ti"


# Two CPU nodes and four GPU nodes with 8 GPUs each: enough to fill the H100 nodes and
# watch the scheduler fall back to the H200 one, and to leave a pod Pending on purpose.
DEFAULT_NODES: tuple[FakeNode, ...] = (
    FakeNode(name="cpu-0", region="us-east", zone="us-east-1a", cpu="32", memory="128Gi"),
    FakeNode(name="cpu-1", region="us-west", zone="us-west-1a", cpu="32", memory="128Gi"),
    FakeNode("gpu-h100-0", "us-east", "us-east-1a", "NVIDIA-H100-80GB-HBM3", 8),
    FakeNode("gpu-h100-1", "us-east", "us-east-1b", "NVIDIA-H100-80GB-HBM3", 8),
    FakeNode("gpu-h200-0", "us-east", "us-east-1a", "NVIDIA-H200", 8),
    FakeNode("gpu-a100-0", "us-west", "us-west-1a", "NVIDIA-A100-SXM4-40GB", 8),
)


class ClusterError(RuntimeError):
    """The control plane could not be built, started or reached; the message says why."""


def testbin_dir() -> pathlib.Path:
    """Where ``make testbin`` put the binaries (building them first if needed)."""
    override = os.environ.get("KUBEFAL_TESTBIN")
    script = REPO_ROOT / "e2e" / "testbin.sh"
    result = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **({"KUBEFAL_TESTBIN": override} if override else {})},
    )
    if result.returncode != 0:
        raise ClusterError(
            f"building the control-plane binaries failed (run `make testbin`):\n{result.stderr}"
        )
    return pathlib.Path(result.stdout.strip().splitlines()[-1])


free_port = ports.free_port


# --- PKI -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    """Paths of the certificates and keys the control plane uses."""

    directory: pathlib.Path

    def path(self, name: str) -> pathlib.Path:
        return self.directory / name

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        ca_key = certs.new_key()
        ca = certs.certificate(
            subject=certs.subject_name("kubefal-local-ca"), key=ca_key, issuer=None
        )
        front_key = certs.new_key()
        front_ca = certs.certificate(
            subject=certs.subject_name("kubefal-front-proxy-ca"), key=front_key, issuer=None
        )
        files: dict[str, bytes] = {
            "ca.crt": certs.pem_cert(ca),
            "ca.key": certs.pem_key(ca_key),
            "front-proxy-ca.crt": certs.pem_cert(front_ca),
        }
        issued = {
            "apiserver": (
                certs.subject_name("kube-apiserver"),
                (ca, ca_key),
                ExtendedKeyUsageOID.SERVER_AUTH,
                ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
                ["127.0.0.1", "10.0.0.1"],
            ),
            "admin": (
                certs.subject_name("kubefal-admin", "system:masters"),
                (ca, ca_key),
                ExtendedKeyUsageOID.CLIENT_AUTH,
                [],
                [],
            ),
            # kwok's kubelet API (pod logs): the API server reaches it at the nodes' InternalIP.
            "kubelet": (
                certs.subject_name("kwok-kubelet"),
                (ca, ca_key),
                ExtendedKeyUsageOID.SERVER_AUTH,
                ["localhost"],
                ["127.0.0.1"],
            ),
            "front-proxy-client": (
                certs.subject_name("front-proxy-client"),
                (front_ca, front_key),
                ExtendedKeyUsageOID.CLIENT_AUTH,
                [],
                [],
            ),
        }
        for stem, (subject, issuer, usage, dns_names, ips) in issued.items():
            key = certs.new_key()
            cert = certs.certificate(
                subject=subject,
                key=key,
                issuer=issuer,
                usage=usage,
                dns_names=dns_names,
                ip_addresses=ips,
            )
            files[f"{stem}.crt"] = certs.pem_cert(cert)
            files[f"{stem}.key"] = certs.pem_key(key)
        service_account_key = certs.new_key()
        files["sa.key"] = certs.pem_key(service_account_key)
        files["sa.pub"] = service_account_key.public_key().public_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        for name, content in files.items():
            self.path(name).write_bytes(content)
            if name.endswith(".key"):
                self.path(name).chmod(0o600)


def kubeconfig_document(*, server: str, pki: Pki) -> dict[str, Any]:
    def b64(name: str) -> str:
        return base64.b64encode(pki.path(name).read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubefal-local",
                "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
            }
        ],
        "users": [
            {
                "name": "kubefal-admin",
                "user": {
                    "client-certificate-data": b64("admin.crt"),
                    "client-key-data": b64("admin.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "kubefal-local",
                "context": {"cluster": "kubefal-local", "user": "kubefal-admin"},
            }
        ],
        "current-context": "kubefal-local",
    }


def node_manifest(node: FakeNode) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "topology.kubernetes.io/region": node.region,
        "topology.kubernetes.io/zone": node.zone,
    }
    resources = {"cpu": node.cpu, "memory": node.memory, "pods": "110"}
    spec: dict[str, Any] = {"providerID": f"kwok://{node.name}"}
    if node.gpu_product:
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": node.gpu_product,
            "nvidia.com/gpu.count": str(node.gpus),
        }
        resources["nvidia.com/gpu"] = str(node.gpus)
        spec["taints"] = [GPU_TAINT]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": labels,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": spec,
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
                "bootID": "",
                "containerRuntimeVersion": "",
                "kernelVersion": "",
                "machineID": "",
                "osImage": "",
                "systemUUID": "",
            },
            "phase": "Running",
        },
    }


# --- processes -------------------------------------------------------------------------


@dataclasses.dataclass
class Component:
    name: str
    pid: int
    log: pathlib.Path


def _pid_gone(holder: str) -> bool:
    """A pod-range claim's holder is gone (empty: an older claimer has not written its pid yet)."""
    return holder.isdigit() and not processes.alive(int(holder))


def claim_pod_cidr() -> tuple[str, pathlib.Path]:
    """A /16 of 127.64.0.0/10 no live local cluster on this machine uses, and its claim file.

    Concurrent e2e sessions each start their own cluster; with one shared range their kwoks
    handed out the same pod IPs, and one session's gateway reached another session's runner
    bound there. The claim file holds this process's PID until kwok runs, then kwok's
    (testkit.claims); a claim whose process is gone is taken over.
    """
    POD_CIDR_CLAIMS.mkdir(parents=True, exist_ok=True)
    octets = list(range(65, 128))  # 127.64/16: clusters started before the claims, and POD_CIDR
    random.shuffle(octets)
    for octet in octets:
        claim = POD_CIDR_CLAIMS / str(octet)
        if claims.take(claim, str(os.getpid()), stale=_pid_gone):
            return f"127.{octet}.0.0/16", claim
    raise ClusterError(f"every pod range of 127.64.0.0/10 is claimed in {POD_CIDR_CLAIMS}")


def _tail(path: pathlib.Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop_pids(pids: Sequence[int], *, timeout: float = 20.0) -> None:
    """SIGTERM each process group, wait, then SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(processes.alive(pid) for pid in pids):
        for pid in pids:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    for pid in pids:
        if processes.alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)


class LocalCluster:
    """Start (or attach to) the local control plane; use as a context manager.

    ``LocalCluster(state_dir).start()`` starts every component and waits until the nodes
    are Ready; ``stop()`` stops them by PID and keeps the logs. ``attach()`` returns a
    cluster already running in ``state_dir`` (from ``make cluster-up``), or None.
    """

    def __init__(
        self,
        state_dir: pathlib.Path = DEFAULT_STATE_DIR,
        *,
        nodes: Sequence[FakeNode] = DEFAULT_NODES,
        hpa_sync_period: str = "2s",
        real_node: bool = False,
    ) -> None:
        self.state_dir = state_dir
        # Opt-in: one node run by a real kubelet with containerd (e2e/realnode.py).
        self.real_node = real_node
        self.nodes = tuple(nodes)
        self.hpa_sync_period = hpa_sync_period
        self.pki = Pki(state_dir / "pki")
        self.kubeconfig = state_dir / "kubeconfig"
        self.log_dir = state_dir / "logs"
        self.components: list[Component] = []
        self.testbin: pathlib.Path | None = None
        self.server = ""
        self.kubelet_port = 0
        """kwok's kubelet API (pod logs) on 127.0.0.1; 0 on a cluster started before it had one."""
        self.owned = True

    # -- lifecycle --

    @classmethod
    def attach(cls, state_dir: pathlib.Path = DEFAULT_STATE_DIR) -> LocalCluster | None:
        state_file = state_dir / "state.json"
        if not state_file.exists():
            return None
        state = json.loads(state_file.read_text())
        components = [
            Component(c["name"], c["pid"], pathlib.Path(c["log"])) for c in state["components"]
        ]
        if not components or not all(processes.alive(c.pid) for c in components):
            return None
        cluster = cls(state_dir)
        cluster.components = components
        cluster.server = state["server"]
        cluster.kubelet_port = int(state.get("kubelet_port", 0))
        cluster.testbin = pathlib.Path(state["testbin"])
        cluster.owned = False
        cluster.real_node = (state_dir / realnode.STATE_FILE).exists()
        try:
            cluster._wait_http(f"{cluster.server}/readyz", timeout=10, name="kube-apiserver")
        except ClusterError:
            return None
        return cluster

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.owned:
            self.stop()

    def start(self) -> LocalCluster:
        started = time.monotonic()
        self.testbin = testbin_dir()
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        self.log_dir.mkdir(parents=True)
        self.pki.create()
        try:
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            self._start_controllers()
            self._create_nodes()
            self._wait_nodes_ready(timeout=90)
            if self.real_node:
                archives = sorted((REPO_ROOT / "dist" / "images").glob("*.oci.tar"))
                realnode.start(self, image_archives=archives)
        except BaseException:
            self.stop()
            raise
        self._write_state()
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        realnode.teardown(self.state_dir, stop_pids)
        stop_pids([c.pid for c in reversed(self.components)])
        self.components = []
        (self.state_dir / "state.json").unlink(missing_ok=True)

    # -- components --

    def _binary(self, name: str) -> str:
        assert self.testbin is not None
        return str(self.testbin / name)

    def _spawn(self, name: str, argv: list[str]) -> Component:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.state_dir,
            )
        component = Component(name, process.pid, log)
        self.components.append(component)
        return component

    def _check_alive(self, component: Component) -> None:
        if not processes.alive(component.pid):
            raise ClusterError(f"{component.name} exited; last log lines:\n{_tail(component.log)}")

    def _wait_http(
        self,
        url: str,
        *,
        timeout: float,
        name: str,
        component: Component | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        if context is None and url.startswith("https"):
            context = ssl.create_default_context(cafile=str(self.pki.path("ca.crt")))
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if component is not None:
                self._check_alive(component)
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as error:
                last_error = str(error)
            time.sleep(0.2)
        tail = _tail(component.log) if component else ""
        raise ClusterError(f"{name} not ready at {url} after {timeout}s ({last_error})\n{tail}")

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        etcd = self._spawn(
            "etcd",
            [
                self._binary("etcd"),
                "--name=kubefal",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=kubefal=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
        )
        self._wait_http(f"{self.etcd_url}/health", timeout=30, name="etcd", component=etcd)

    def _start_apiserver(self) -> None:
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        pki = self.pki.path
        apiserver = self._spawn(
            "kube-apiserver",
            [
                self._binary("kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={pki('apiserver.crt')}",
                f"--tls-private-key-file={pki('apiserver.key')}",
                f"--client-ca-file={pki('ca.crt')}",
                f"--service-account-issuer={self.server}",
                f"--service-account-key-file={pki('sa.pub')}",
                f"--service-account-signing-key-file={pki('sa.key')}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                # The aggregation layer, so that the gateway can serve external.metrics.k8s.io.
                f"--requestheader-client-ca-file={pki('front-proxy-ca.crt')}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-username-headers=X-Remote-User",
                f"--proxy-client-cert-file={pki('front-proxy-client.crt')}",
                f"--proxy-client-key-file={pki('front-proxy-client.key')}",
                "--enable-aggregator-routing=false",
                # Reach kubelets (the opt-in real node) by InternalIP only: a Hostname address
                # would be resolved through DNS, off loopback.
                "--kubelet-preferred-address-types=InternalIP",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait_http(
            f"{self.server}/readyz", timeout=90, name="kube-apiserver", component=apiserver
        )

    def _write_kubeconfig(self) -> None:
        document = kubeconfig_document(server=self.server, pki=self.pki)
        self.kubeconfig.write_text(yaml.safe_dump(document, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def _start_controllers(self) -> None:
        assert self.testbin is not None
        kubeconfig = str(self.kubeconfig)
        self._spawn(
            "kube-controller-manager",
            [
                self._binary("kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                "--controllers=*",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={self.pki.path('sa.key')}",
                f"--root-ca-file={self.pki.path('ca.crt')}",
                f"--horizontal-pod-autoscaler-sync-period={self.hpa_sync_period}",
                "--horizontal-pod-autoscaler-downscale-stabilization=10s",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                "--concurrent-gc-syncs=20",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--v=1",
            ],
        )
        scheduler_config = self.state_dir / "scheduler.yaml"
        scheduler_config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": kubeconfig, "qps": 200, "burst": 400},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        self._spawn(
            "kube-scheduler",
            [
                self._binary("kube-scheduler"),
                f"--config={scheduler_config}",
                "--secure-port=0",
                "--v=1",
            ],
        )
        self._install_kwok_logs_crd()
        pod_cidr, claim = claim_pod_cidr()
        self.kubelet_port = free_port()
        kwok = self._spawn(
            "kwok",
            [
                self._binary("kwok"),
                f"--kubeconfig={kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--manage-nodes-with-label-selector=",
                "--manage-single-node=",
                f"--cidr={pod_cidr}",
                "--node-ip=127.0.0.1",
                "--node-lease-duration-seconds=40",
                # The kubelet API of every fake node (kubectl logs, pods/log): each pod's log is
                # the CRI-format file its Logs object names (e2e/podrunner.py writes both).
                f"--node-port={self.kubelet_port}",
                f"--server-address=127.0.0.1:{self.kubelet_port}",
                f"--tls-cert-file={self.pki.path('kubelet.crt')}",
                f"--tls-private-key-file={self.pki.path('kubelet.key')}",
                "--enable-crds=Logs",
                "-c",
                str(self.testbin / "kwok-stages.yaml"),
            ],
        )
        claims.hold(claim, str(kwok.pid))  # claimed while this cluster's kwok lives

    def _install_kwok_logs_crd(self) -> None:
        """kwok's Logs CRD (vendored from the pinned kwok), Established before kwok watches it."""
        self.kubectl("apply", "-f", str(KWOK_LOGS_CRD))
        self.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", "crd/logs.kwok.x-k8s.io"
        )

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def _create_nodes(self) -> None:
        documents = [node_manifest(node) for node in self.nodes]
        self.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(documents))

    def _wait_nodes_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        not_ready: list[str] = [node.name for node in self.nodes]
        while time.monotonic() < deadline:
            for component in self.components:
                self._check_alive(component)
            listing = json.loads(self.kubectl("get", "nodes", "-o", "json"))
            not_ready = []
            for item in listing["items"]:
                conditions = {c["type"]: c for c in item["status"].get("conditions", [])}
                taints = item["spec"].get("taints", [])
                startup_taint = any(
                    t["key"].startswith("node.kubernetes.io/not-ready") for t in taints
                )
                if conditions.get("Ready", {}).get("status") != "True" or startup_taint:
                    not_ready.append(item["metadata"]["name"])
            if not not_ready and len(listing["items"]) >= len(self.nodes):
                return
            time.sleep(0.3)
        raise ClusterError(f"nodes not Ready after {timeout}s: {not_ready}")

    def _write_state(self) -> None:
        state = {
            "server": self.server,
            "kubelet_port": self.kubelet_port,
            "testbin": str(self.testbin),
            "kubeconfig": str(self.kubeconfig),
            "components": [dataclasses.asdict(c) | {"log": str(c.log)} for c in self.components],
        }
        (self.state_dir / "state.json").write_text(json.dumps(state, indent=2))

    # -- reporting --

    def pids(self) -> list[int]:
        return [c.pid for c in self.components]

    def memory_mib(self) -> dict[str, float]:
        """Resident memory of each component, from /proc (MiB)."""
        usage: dict[str, float] = {}
        for component in self.components:
            with contextlib.suppress(OSError):
                for line in pathlib.Path(f"/proc/{component.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        usage[component.name] = int(line.split()[1]) / 1024
        return usage

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {c.name} ({c.log}) ---\n{_tail(c.log, lines)}" for c in self.components
        )


def _cmd_up(args: argparse.Namespace) -> int:
    state_dir = pathlib.Path(args.state_dir)
    running = LocalCluster.attach(state_dir)
    if running is not None:
        print(f"# the local control plane is already running ({running.server})")
    else:
        DEFAULT_STATE_DIR.parent.mkdir(parents=True, exist_ok=True)
        try:
            running = LocalCluster(state_dir, real_node=args.real_node).start()
        except ClusterError as error:
            print(f"cluster-up failed: {error}", file=sys.stderr)
            return 1
        memory = running.memory_mib()
        print(
            f"# local control plane up in {running.startup_seconds:.1f}s at {running.server}; "
            f"memory {sum(memory.values()):.0f} MiB "
            + ", ".join(f"{name} {mib:.0f}" for name, mib in memory.items())
        )
    print(f"export KUBECONFIG={running.kubeconfig}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    state_file = pathlib.Path(args.state_dir) / "state.json"
    if not state_file.exists():
        print("# no local control plane recorded; nothing to stop")
        return 0
    state = json.loads(state_file.read_text())
    pids = [c["pid"] for c in reversed(state["components"])]
    realnode.teardown(pathlib.Path(args.state_dir), stop_pids)
    stop_pids(pids)
    left = [pid for pid in pids if processes.alive(pid)]
    state_file.unlink(missing_ok=True)
    if left:
        print(f"processes still alive: {left}", file=sys.stderr)
        return 1
    print("# local control plane stopped")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    running = LocalCluster.attach(pathlib.Path(args.state_dir))
    if running is None:
        print("# not running (make cluster-up)")
        return 1
    memory = running.memory_mib()
    print(f"# running at {running.server}; memory {sum(memory.values()):.0f} MiB")
    for name, mib in memory.items():
        print(f"{name:26} {mib:8.0f} MiB")
    print(f"export KUBECONFIG={running.kubeconfig}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.cluster", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR))
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the local control plane in the background")
    up.add_argument(
        "--real-node",
        action="store_true",
        help="also a node run by a real kubelet with containerd (e2e/realnode.py)",
    )
    commands.add_parser("down", help="stop it by PID")
    commands.add_parser("status", help="show whether it runs and its memory")
    args = parser.parse_args(argv)
    handler = {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status}[args.command]
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
