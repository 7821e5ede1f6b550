"""One real node for the local control plane: a kubelet with containerd and runc, loopback only.

Beside the kwok nodes (fakes whose "pods" are local processes), this node runs pods as real
containers from real images, so the chart's pods and runner pods can be tested as they run on a
cluster. Opt-in: ``LocalCluster(real_node=True)``, ``python -m e2e.cluster up --real-node`` or
``KUBEFAL_REAL_NODE=1`` for the e2e session. What it takes on a sandboxed host, each with the
error seen without it:

* containerd with its config, root, state and socket in the cluster's state directory, CRI on,
  runc, overlayfs, and ``restrict_oom_score_adj`` (without CAP_SYS_RESOURCE every sandbox fails:
  ``failed to update /proc/self/oom_score_adj: Permission denied``);
* a sandbox ("pause") image made here from a static binary (no registry to pull one from);
* a CNI folder with only a loopback config (``cni plugin not initialized`` without one), so pods
  must use ``hostNetwork: true``: no bridge, no address outside 127.0.0.0/8;
* a kubelet bound to 127.0.0.1 with ``cgroupfs``, ``failSwapOn: false`` and
  ``makeIPTablesUtilChains: false`` (it would otherwise add iptables rules, among them a DROP of
  traffic into 127.0.0.0/8 from other sources), anonymous access to its API (loopback only) so the
  API server's logs and exec work;
* the Node's InternalIP patched to 127.0.0.1 (the kubelet refuses a loopback node IP and leaves the
  Node without an address);
* the kernel settings the kubelet changes at start (``vm.overcommit_memory``, ``kernel.panic``,
  ``kernel.panic_on_oops``) restored once the node is Ready and again at teardown;
* the taint ``kubefal.dev/real-node=true:NoSchedule``: only pods that tolerate it land here.

The network rule: tests may send traffic only to loopback. Pods here use ``hostNetwork`` and bind
127.x addresses; nothing may dial a ClusterIP (there is no kube-proxy: such packets would leave
through the default route).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import ipaddress
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from testkit import certs, claims, processes

NODE_NAME = "real-0"
TAINT = {"key": "kubefal.dev/real-node", "value": "true", "effect": "NoSchedule"}
LABEL = "kubefal.dev/real-node"
PAUSE_IMAGE = "kubefal.local/pause:1"
TOLERATION = {"key": TAINT["key"], "operator": "Equal", "value": "true", "effect": "NoSchedule"}
SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
STATE_FILE = "realnode.json"
# Host paths the kubelet writes whatever its flags say; teardown removes those it created.
HOST_PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods")
CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")
CONTAINERD_NAMESPACE = "k8s.io"
HOST_CLAIM = pathlib.Path("/tmp/kubefal-real-node.claim")
"""Which cluster's real node this machine runs ({"pid", "state_dir"}): one at a time. Two
kubelets on one host share /var/lib/kubelet and the ``kubepods`` cgroups, and each one's
orphan cleanup kills the other's pod sandboxes ("cannot start a stopped process")."""
HOST_CLAIM_WAIT_ENV = "KUBEFAL_REAL_NODE_WAIT"
"""Seconds a new real node waits for another cluster's to go (default 240: within a test's
300 s timeout, so the error naming the other cluster is what a test reports)."""


def _host_holder(text: str) -> dict[str, Any]:
    """The claim's {"pid", "state_dir"} ({} when unreadable: a holder that is gone)."""
    with contextlib.suppress(ValueError):
        found = json.loads(text or "{}")
        if isinstance(found, dict):
            return found
    return {}


def _claim_host(state_dir: pathlib.Path, *, timeout: float) -> None:
    """Take ``HOST_CLAIM`` for ``state_dir``, waiting while a live process holds it for another
    cluster; a claim whose process is gone is taken over (testkit.claims: one taker wins)."""
    deadline = time.monotonic() + timeout
    mine = json.dumps({"pid": os.getpid(), "state_dir": str(state_dir)})

    def stale(text: str) -> bool:
        holder = _host_holder(text)
        return holder.get("state_dir") == str(state_dir) or not processes.alive(
            int(holder.get("pid", 0))
        )

    while not claims.take(HOST_CLAIM, mine, stale=stale):
        if time.monotonic() > deadline:
            holder = _host_holder(HOST_CLAIM.read_text() if HOST_CLAIM.exists() else "")
            raise RealNodeError(
                f"another cluster's real node runs on this machine ({holder.get('state_dir')}, "
                f"pid {holder.get('pid')}); a machine runs one kubelet. Waited {timeout:.0f}s "
                f"({HOST_CLAIM_WAIT_ENV}); stop it or remove {HOST_CLAIM} if it is stale"
            )
        time.sleep(2)


def _hold_host(state_dir: pathlib.Path, pid: int) -> None:
    """Keep the claim while ``pid`` (the kubelet) lives, also after the starter exits."""
    claims.hold(HOST_CLAIM, json.dumps({"pid": pid, "state_dir": str(state_dir)}))


def _release_host(state_dir: pathlib.Path) -> None:
    claims.release(
        HOST_CLAIM, mine=lambda text: _host_holder(text).get("state_dir") == str(state_dir)
    )


class RealNodeError(RuntimeError):
    """The real node could not start; the message says which part and why."""


def pause_image_archive(pause_binary: pathlib.Path, destination: pathlib.Path) -> None:
    """An OCI image archive holding only ``/pause``, named ``PAUSE_IMAGE``."""
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tar.gettarinfo(str(pause_binary), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755
        with pause_binary.open("rb") as handle:
            tar.addfile(info, handle)
    diff_id = "sha256:" + hashlib.sha256(layer_tar.getvalue()).hexdigest()
    layer = gzip.compress(layer_tar.getvalue(), mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": blob(config, "application/vnd.oci.image.config.v1+json"),
            "layers": [blob(layer, "application/vnd.oci.image.layer.v1.tar+gzip")],
        }
    ).encode()
    manifest_descriptor = blob(manifest, "application/vnd.oci.image.manifest.v1+json")
    manifest_descriptor["annotations"] = {
        "io.containerd.image.name": PAUSE_IMAGE,
        "org.opencontainers.image.ref.name": PAUSE_IMAGE.rsplit(":", 1)[1],
    }
    index = json.dumps({"schemaVersion": 2, "manifests": [manifest_descriptor]}).encode()
    with tarfile.open(destination, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", index)
        for digest, data in blobs.items():
            add(f"blobs/sha256/{digest}", data)


def _kubepods_cgroups(*, exist: bool) -> list[pathlib.Path]:
    """The kubelet's ``kubepods`` cgroup of each controller (those that exist, or not yet)."""
    found = []
    with contextlib.suppress(OSError):
        for controller in CGROUP_ROOT.iterdir():
            path = controller / "kubepods"
            if controller.is_dir() and not controller.is_symlink() and path.exists() == exist:
                found.append(path)
    return found


def cgroup_root_name(state_dir: pathlib.Path) -> str:
    """This node's own cgroup root (the kubelet's ``cgroupRoot``): two real nodes on one host
    (two e2e sessions) must not share ``/kubepods``, because a kubelet kills the processes of
    every pod cgroup under its root that it does not know (its orphan cleanup): the other
    node's sandboxes die ("Pod sandbox changed, it will be killed and re-created")."""
    return f"kubefal-{state_dir.resolve().name}"


def _create_cgroup_root(name: str) -> list[pathlib.Path]:
    """``name`` in every controller's hierarchy (the kubelet refuses a missing cgroupRoot);
    cpuset gets its parent's CPUs and memory nodes (a new v1 cpuset has none)."""
    created = []
    with contextlib.suppress(OSError):
        for controller in CGROUP_ROOT.iterdir():
            if not controller.is_dir() or controller.is_symlink():
                continue
            path = controller / name
            if path.exists():
                continue
            path.mkdir()
            created.append(path)
            for setting in ("cpuset.cpus", "cpuset.mems"):
                parent = controller / setting
                if parent.exists():
                    (path / setting).write_text(parent.read_text())
    return created


def _remove_cgroup_tree(path: pathlib.Path) -> None:
    """rmdir a cgroup and its children, deepest first (cgroup folders only go with rmdir)."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def read_sysctls() -> dict[str, str]:
    return {name: pathlib.Path("/proc/sys", name).read_text().strip() for name in SYSCTLS}


def restore_sysctls(saved: dict[str, str]) -> None:
    for name, value in saved.items():
        path = pathlib.Path("/proc/sys", name)
        with contextlib.suppress(OSError):
            if path.read_text().strip() != value:
                path.write_text(value)


class RealNode:
    """Paths and configuration of the real node under ``state_dir/realnode``."""

    def __init__(self, state_dir: pathlib.Path, testbin: pathlib.Path) -> None:
        self.state_dir = state_dir
        self.testbin = testbin
        self.root = state_dir / "realnode"
        self.socket = self.root / "containerd" / "containerd.sock"

    # -- containerd --

    def containerd_config(self) -> str:
        base = self.root / "containerd"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""\
version = 2
root = "{base / "root"}"
state = "{base / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{base / "containerd.sock.ttrpc"}"

[debug]
  address = "{base / "debug.sock"}"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{shutil.which("runc") or "/usr/sbin/runc"}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{self.root / "cni"}"

[{cri}.registry]
  config_path = "{self.registry_hosts}"
"""

    @property
    def registry_hosts(self) -> pathlib.Path:
        """containerd's per-registry ``hosts.toml`` folder (read at each pull)."""
        return self.root / "containerd" / "certs.d"

    def allow_plain_http_registry(self, address: str) -> None:
        """Let pods pull from the registry at ``address`` (``127.0.0.1:<port>``) over plain
        HTTP, as a local test registry serves; nothing restarts (containerd reads it per pull)."""
        host = ipaddress.ip_address(address.rsplit(":", 1)[0])
        if not host.is_loopback:
            raise RealNodeError(f"{address}: only a loopback registry is allowed here")
        folder = self.registry_hosts / address
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts.toml").write_text(
            f'server = "http://{address}"\n\n[host."http://{address}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        )

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        result = subprocess.run(
            ["ctr", f"--address={self.socket}", f"--namespace={CONTAINERD_NAMESPACE}", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RealNodeError(f"ctr {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def import_image(self, archive: pathlib.Path) -> None:
        self.ctr("images", "import", "--no-unpack=false", str(archive))

    # -- kubelet --

    def kubelet_config(
        self, *, port: int, healthz_port: int, cgroup_root: str | None = None
    ) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            # Loopback only; lets the API server's logs/exec reach it without a client cert.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{cgroup_root or cgroup_root_name(self.state_dir)}",
            "failSwapOn": False,
            "makeIPTablesUtilChains": False,
            "protectKernelDefaults": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "registerWithTaints": [TAINT],
            "resolvConf": "/etc/resolv.conf",
            # Imported images cannot be pulled again: never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%"},
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "maxPods": 50,
        }


def write_state(state_dir: pathlib.Path, state: dict[str, Any]) -> None:
    (state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))


def teardown(state_dir: pathlib.Path, stop_pids: Callable[[Sequence[int]], None]) -> None:
    """Stop the pods' containers, the kubelet and containerd, restore the kernel settings."""
    state_file = state_dir / STATE_FILE
    if not state_file.exists():
        return
    state = json.loads(state_file.read_text())
    node = RealNode(state_dir, pathlib.Path(state["testbin"]))
    if state.get("kubelet_pid"):
        stop_pids([state["kubelet_pid"]])
    if node.socket.exists():
        # The kubelet leaves pods running when it stops: kill their tasks, then the containers.
        with contextlib.suppress(RealNodeError, subprocess.TimeoutExpired):
            for line in node.ctr("tasks", "list", "--quiet", timeout=30).split():
                node.ctr("tasks", "kill", "--signal=SIGKILL", line, check=False, timeout=30)
            deadline = time.monotonic() + 20
            while (
                time.monotonic() < deadline and node.ctr("tasks", "list", "-q", timeout=30).split()
            ):
                for line in node.ctr("tasks", "list", "-q", timeout=30).split():
                    node.ctr("tasks", "delete", line, check=False, timeout=30)
                time.sleep(0.2)
            for line in node.ctr("containers", "list", "--quiet", timeout=30).split():
                node.ctr("containers", "delete", line, check=False, timeout=30)
    if state.get("containerd_pid"):
        stop_pids([state["containerd_pid"]])
    restore_sysctls(state.get("sysctls", {}))
    # Mounts left under the kubelet's and containerd's folders (pod volumes, snapshots).
    with contextlib.suppress(OSError):
        for line in reversed(pathlib.Path("/proc/self/mounts").read_text().splitlines()):
            target = line.split()[1]
            if target.startswith(str(node.root) + "/"):
                subprocess.run(["umount", "-l", target], check=False, capture_output=True)
    # The unpacked images and snapshots (about 800 MB with both kubefal images); logs stay.
    shutil.rmtree(node.root / "containerd" / "root", ignore_errors=True)
    shutil.rmtree(node.root / "kubelet", ignore_errors=True)
    for created in state.get("created_cgroups", []):
        _remove_cgroup_tree(pathlib.Path(created))
    for created in state.get("created_host_paths", []):
        shutil.rmtree(created, ignore_errors=True)
    state_file.unlink(missing_ok=True)
    _release_host(state_dir)


def _wait(
    predicate: Callable[[], bool], *, timeout: float, what: str, check: Callable[[], None]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.2)
    raise RealNodeError(f"{what} not reached after {timeout:.0f}s")


def start(cluster: Any, *, image_archives: Sequence[pathlib.Path] = ()) -> dict[str, Any]:
    """Start containerd and a kubelet for ``cluster`` (an ``e2e.cluster.LocalCluster``).

    Their processes become components of the cluster (logs in its log folder); the state
    needed to tear the node down is kept in ``realnode.json`` beside ``state.json``.
    """
    from e2e import cluster as local_cluster

    testbin: pathlib.Path = cluster.testbin
    for binary in ("kubelet", "pause"):
        if not (testbin / binary).is_file():
            raise RealNodeError(
                f"{testbin / binary} is missing: run `bash e2e/testbin.sh --real-node`"
            )
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            raise RealNodeError(f"{tool} is required: apt-get install containerd runc")
    node = RealNode(cluster.state_dir, testbin)
    if node.root.exists():
        shutil.rmtree(node.root)
    for folder in ("containerd", "cni", "kubelet", "kubelet-pki"):
        (node.root / folder).mkdir(parents=True)
    (node.root / "cni" / "99-loopback.conf").write_text(
        json.dumps({"cniVersion": "0.3.1", "name": "lo", "type": "loopback"})
    )
    config = node.root / "containerd" / "config.toml"
    config.write_text(node.containerd_config())
    # Claimed first: a node that waits in vain has created nothing (host paths, cgroups).
    _claim_host(cluster.state_dir, timeout=float(os.environ.get(HOST_CLAIM_WAIT_ENV, "240")))
    state: dict[str, Any] = {
        "testbin": str(testbin),
        "sysctls": read_sysctls(),
        "node": NODE_NAME,
        "created_host_paths": [p for p in HOST_PATHS if not pathlib.Path(p).exists()],
        "created_cgroups": [
            str(p) for p in _create_cgroup_root(cgroup_root_name(cluster.state_dir))
        ],
    }
    containerd = cluster._spawn("containerd", ["containerd", f"--config={config}"])
    state["containerd_pid"] = containerd.pid
    write_state(cluster.state_dir, state)
    _wait(
        lambda: bool(node.ctr("version", timeout=10)),
        timeout=30,
        what="containerd's socket",
        check=lambda: cluster._check_alive(containerd),
    )
    pause_archive = node.root / "pause.oci.tar"
    pause_image_archive(testbin / "pause", pause_archive)
    for archive in (pause_archive, *image_archives):
        node.import_image(archive)

    # The kubelet's client certificate: system:node:<name> in system:nodes, from the cluster CA.
    pki = cluster.pki
    ca_cert = x509.load_pem_x509_certificate(pki.path("ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key(pki.path("ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    key = certs.new_key()
    cert = certs.certificate(
        subject=certs.subject_name(f"system:node:{NODE_NAME}", "system:nodes"),
        key=key,
        issuer=(ca_cert, ca_key),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    kubelet_pki = node.root / "kubelet-pki"
    (kubelet_pki / "kubelet.crt").write_bytes(certs.pem_cert(cert))
    (kubelet_pki / "kubelet.key").write_bytes(certs.pem_key(key))
    (kubelet_pki / "kubelet.key").chmod(0o600)
    kubeconfig_document = local_cluster.kubeconfig_document(server=cluster.server, pki=pki)
    kubeconfig_document["users"][0]["user"] = {
        "client-certificate": str(kubelet_pki / "kubelet.crt"),
        "client-key": str(kubelet_pki / "kubelet.key"),
    }
    kubeconfig = node.root / "kubelet.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_document))
    kubelet_config = node.root / "kubelet.yaml"
    kubelet_config.write_text(
        yaml.safe_dump(
            node.kubelet_config(
                port=local_cluster.free_port(), healthz_port=local_cluster.free_port()
            )
        )
    )
    kubelet = cluster._spawn(
        "kubelet",
        [
            str(testbin / "kubelet"),
            f"--config={kubelet_config}",
            f"--kubeconfig={kubeconfig}",
            f"--hostname-override={NODE_NAME}",
            # Refused ("nodeIP can't be loopback address"), which is the point: without it the
            # kubelet resolves its node name through DNS and falls back to the default route's
            # address; refused, it sets no address and keeps the one patched in below.
            "--node-ip=127.0.0.1",
            f"--root-dir={node.root / 'kubelet'}",
            f"--cert-dir={kubelet_pki}",
            f"--node-labels={LABEL}=true",
            "--v=1",
        ],
    )
    state["kubelet_pid"] = kubelet.pid
    _hold_host(cluster.state_dir, kubelet.pid)
    write_state(cluster.state_dir, state)

    def check() -> None:
        cluster._check_alive(kubelet)
        cluster._check_alive(containerd)

    _wait(
        lambda: bool(cluster.kubectl("get", "node", NODE_NAME, "-o", "name", check=False)),
        timeout=60,
        what=f"node {NODE_NAME} registered",
        check=check,
    )
    # The Node's only address: InternalIP 127.0.0.1 (a Hostname address would make the API server
    # resolve it through DNS for logs and exec; it also prefers InternalIP only, e2e/cluster.py).
    # Re-applied until Ready, in case an early status update of the kubelet replaced it.
    loopback = [{"type": "InternalIP", "address": "127.0.0.1"}]

    def ready() -> bool:
        item = json.loads(cluster.kubectl("get", "node", NODE_NAME, "-o", "json"))
        if item["status"].get("addresses") != loopback:
            cluster.kubectl(
                "patch",
                "node",
                NODE_NAME,
                "--subresource=status",
                "--type=merge",
                "-p",
                json.dumps({"status": {"addresses": loopback}}),
            )
            return False
        conditions = {c["type"]: c["status"] for c in item["status"].get("conditions", [])}
        return conditions.get("Ready") == "True"

    _wait(ready, timeout=90, what=f"node {NODE_NAME} Ready", check=check)
    restore_sysctls(state["sysctls"])
    return state
