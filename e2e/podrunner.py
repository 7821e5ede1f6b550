"""Run the containers of kwok pods as local processes, so the whole system runs for real.

kwok marks pods Running and gives them IPs in 127.64.0.0/16, but nothing runs there.
This supervisor plays the container runtime for the pods it is asked to watch: when a
pod is Running with an IP, it starts the pod's first container command as a local
process bound to the pod's IP, with the pod's environment and its ConfigMap volumes
materialised in a temporary directory; when the pod is deleted it sends SIGTERM (as the
kubelet would) and SIGKILL after the grace period. The gateway then reaches "the pod" at
its IP exactly as in a cluster.

The process's output (stdout and stderr, merged) goes to ``container.log`` as it is, and to
``container.cri.log`` in the CRI log format containerd writes (``<RFC 3339 nano> stdout F|P
<line>``). A kwok ``Logs`` object named after the pod (owned by it, so it goes with it) names
that file, and the local cluster's kwok serves it as the kubelet would (``e2e/cluster.py``): the
API server's ``pods/log``, ``kubectl logs`` and ``fal runners logs`` read the pod's real output.
On a cluster without kwok's Logs CRD, no object is written and pod logs stay unavailable.

Only loopback pod IPs are accepted: traffic never leaves this machine.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import ipaddress
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch


@dataclasses.dataclass
class PodProcess:
    """A local process standing in for one pod's container."""

    namespace: str
    name: str
    ip: str
    process: subprocess.Popen[bytes]
    log: pathlib.Path
    workdir: pathlib.Path
    grace_seconds: float
    cri_log: pathlib.Path | None = None


class PodRunner:
    """Start a process for every Running pod matching ``label_selector`` in ``namespace``
    (every namespace when it is None).

    Use as a context manager. ``processes`` maps pod name to its process; ``logs()``
    returns the log files, which tests register for failure reports.
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        namespace: str | None,
        label_selector: str,
        root: pathlib.Path | None = None,
    ) -> None:
        self.core = k8s.CoreV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.label_selector = label_selector
        self.root = root or pathlib.Path(tempfile.mkdtemp(prefix="kubefal-pods-"))
        self.processes: dict[str, PodProcess] = {}
        self.started_total = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-runner", daemon=True)

    def __enter__(self) -> PodRunner:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # never entered: nothing to join
            self._thread.join(timeout=10)
        with self._lock:
            names = list(self.processes)
        for name in names:
            self._terminate(name)

    def logs(self) -> list[pathlib.Path]:
        return sorted(self.root.glob("*/container.log"))

    def running(self) -> dict[str, PodProcess]:
        with self._lock:
            return {n: p for n, p in self.processes.items() if p.process.poll() is None}

    # -- the watch loop --

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._resync()
                stream = k8s_watch.Watch()
                for event in stream.stream(
                    *self._list_call(), label_selector=self.label_selector, timeout_seconds=5
                ):
                    if self._stop.is_set():
                        stream.stop()
                        break
                    self._handle(event["type"], event["object"])
            except Exception:  # the API may blip; resync and carry on
                time.sleep(0.5)

    def _list_call(self) -> tuple[Any, ...]:
        if self.namespace is None:
            return (self.core.list_pod_for_all_namespaces,)
        return (self.core.list_namespaced_pod, self.namespace)

    def _resync(self) -> None:
        list_call, *args = self._list_call()
        pods = list_call(*args, label_selector=self.label_selector)
        seen = set()
        for pod in pods.items:
            seen.add(_key(pod))
            self._handle("MODIFIED", pod)
        with self._lock:
            gone = [name for name in self.processes if name not in seen]
        for name in gone:
            self._terminate(name)

    def _handle(self, event_type: str, pod: k8s.V1Pod) -> None:
        name = _key(pod)
        if event_type == "DELETED" or pod.metadata.deletion_timestamp is not None:
            self._terminate(name)
            return
        with self._lock:
            known = name in self.processes
        if known or pod.status.phase != "Running" or not pod.status.pod_ip:
            return
        if not ipaddress.ip_address(pod.status.pod_ip).is_loopback:
            return  # never bind or send to an address off this machine
        if pod.spec.host_network:
            return  # a real node's pod (e2e/realnode.py): its container runs for real
        self._start(pod)

    # -- processes --

    def _materialise_volumes(self, pod: k8s.V1Pod, workdir: pathlib.Path) -> dict[str, str]:
        """Write ConfigMap volumes under ``workdir`` and give emptyDir volumes a directory
        there; return mountPath -> local path."""
        container = pod.spec.containers[0]
        volumes = {v.name: v for v in pod.spec.volumes or []}
        mounts: dict[str, str] = {}
        for mount in container.volume_mounts or []:
            volume = volumes.get(mount.name)
            if volume is None or (
                volume.config_map is None and volume.empty_dir is None and volume.projected is None
            ):
                continue
            local = workdir / mount.mount_path.strip("/")
            local.mkdir(parents=True, exist_ok=True)
            if volume.config_map is None and volume.projected is None:
                mounts[mount.mount_path.rstrip("/")] = str(local)
                continue
            sources = (
                [volume.config_map]
                if volume.config_map is not None
                else [s.config_map for s in volume.projected.sources or [] if s.config_map]
            )
            for source in sources:
                self._write_config_map(pod.metadata.namespace, source, local)
            mounts[mount.mount_path.rstrip("/")] = str(local)
        return mounts

    def _write_config_map(self, namespace: str, source: Any, local: pathlib.Path) -> None:
        """A ConfigMap volume source as the kubelet writes it: every key (data and
        binaryData) at its own name, or only the listed ``items`` at their paths."""
        config_map = self.core.read_namespaced_config_map(source.name, namespace)
        values: dict[str, bytes] = {k: v.encode() for k, v in (config_map.data or {}).items()}
        values.update({k: base64.b64decode(v) for k, v in (config_map.binary_data or {}).items()})
        placed = (
            [(item.key, item.path) for item in source.items]
            if source.items
            else [(key, key) for key in values]
        )
        for key, path in placed:
            target = local / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(values[key])

    def _env_from(self, namespace: str, sources: list[Any]) -> dict[str, str]:
        """What the kubelet exports from ``envFrom``: every key of each Secret or ConfigMap
        (with its prefix). A missing source adds nothing (the kubelet would hold a container
        whose required source is missing; this harness starts it without those variables)."""
        env: dict[str, str] = {}
        for source in sources:
            prefix = source.prefix or ""
            reference = source.secret_ref or source.config_map_ref
            try:
                if source.secret_ref is not None:
                    secret = self.core.read_namespaced_secret(reference.name, namespace)
                    data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
                else:
                    config_map = self.core.read_namespaced_config_map(reference.name, namespace)
                    data = dict(config_map.data or {})
            except k8s.ApiException as error:
                if error.status == 404:
                    continue
                raise
            env.update({prefix + key: value for key, value in data.items()})
        return env

    def _secret_value(self, namespace: str, value_from: Any) -> str | None:
        """``valueFrom.secretKeyRef`` as the kubelet resolves it (None: Secret or key missing)."""
        reference = value_from.secret_key_ref
        try:
            secret = self.core.read_namespaced_secret(reference.name, namespace)
        except k8s.ApiException as error:
            if error.status == 404:
                return None
            raise
        raw = (secret.data or {}).get(reference.key)
        return None if raw is None else base64.b64decode(raw).decode()

    def _start(self, pod: k8s.V1Pod) -> None:
        container = pod.spec.containers[0]
        workdir = self.root / _key(pod).replace("/", "_")
        workdir.mkdir(parents=True, exist_ok=True)
        mounts = self._materialise_volumes(pod, workdir)

        def localise(value: str) -> str:
            """Map a path under a ConfigMap mount (or a path list of them) to the local copy."""
            parts = value.split(":")
            for index, part in enumerate(parts):
                for mount_path, local in mounts.items():
                    if part == mount_path or part.startswith(mount_path + "/"):
                        parts[index] = local + part[len(mount_path) :]
                        break
            return ":".join(parts)

        argv = [localise(a) for a in [*(container.command or []), *(container.args or [])]]
        if not argv:
            return
        if argv[0] in {"python", "python3"}:
            argv[0] = sys.executable  # the venv's interpreter plays the image's
        binds = _host_path_binds(pod)
        if binds:
            argv = _in_private_mounts(binds, argv)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("KUBEFAL_", "FAL_"))
        }
        env.update(self._env_from(pod.metadata.namespace, container.env_from or []))
        for variable in container.env or []:
            if variable.value is not None:
                env[variable.name] = localise(variable.value)
            elif variable.value_from is not None and variable.value_from.secret_key_ref:
                found = self._secret_value(pod.metadata.namespace, variable.value_from)
                if found is not None:
                    env[variable.name] = found
        if "/tmp" in mounts:
            # The pod's own /tmp (an emptyDir), not the host's: runners write fixed names there
            # (the CA bundle), which concurrent pods on one host must not share.
            env["TMPDIR"] = mounts["/tmp"]
        env["KUBEFAL_RUNNER_HOST"] = pod.status.pod_ip
        env["KUBEFAL_POD_NAME"] = pod.metadata.name
        env["KUBEFAL_POD_IP"] = pod.status.pod_ip
        log = workdir / "container.log"
        cri_log = workdir / "container.cri.log"
        cri_log.touch()
        write_logs_object(self.custom, pod, container.name, cri_log)
        process = subprocess.Popen(
            argv,
            cwd=localise(container.working_dir) if container.working_dir else workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert process.stdout is not None
        threading.Thread(
            target=_copy_output,
            args=(process.stdout, log, cri_log),
            name=f"pod-log {_key(pod)}",
            daemon=True,
        ).start()
        grace = float(pod.spec.termination_grace_period_seconds or 30)
        with self._lock:
            self.processes[_key(pod)] = PodProcess(
                namespace=pod.metadata.namespace,
                name=pod.metadata.name,
                ip=pod.status.pod_ip,
                process=process,
                log=log,
                workdir=workdir,
                grace_seconds=grace,
                cri_log=cri_log,
            )
            self.started_total += 1

    def _terminate(self, name: str) -> None:
        with self._lock:
            entry = self.processes.pop(name, None)
        if entry is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(entry.process.pid, signal.SIGTERM)
        try:
            entry.process.wait(timeout=entry.grace_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry.process.pid, signal.SIGKILL)
            entry.process.wait(timeout=10)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


KWOK_GROUP = "kwok.x-k8s.io"
CRI_RECORD_BYTES = 16 * 1024
"""A longer line is split into partial (``P``) records, as containerd splits at 16 KiB."""


def write_logs_object(
    custom: k8s.CustomObjectsApi, pod: k8s.V1Pod, container: str, path: pathlib.Path
) -> bool:
    """kwok's ``Logs`` for ``pod``: its ``container``'s log is the CRI-format file ``path``.

    Owned by the pod, so it goes with it. False when the cluster has no Logs CRD (or this
    client no right to it): then the pod's log stays unavailable.
    """
    name, namespace = pod.metadata.name, pod.metadata.namespace
    body = {
        "apiVersion": f"{KWOK_GROUP}/v1alpha1",
        "kind": "Logs",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod.metadata.uid}
            ],
        },
        "spec": {"logs": [{"containers": [container], "logsFile": str(path)}]},
    }
    api = (KWOK_GROUP, "v1alpha1", namespace, "logs")
    try:
        custom.create_namespaced_custom_object(*api, body)
    except k8s.ApiException as error:
        if error.status in (403, 404):
            return False
        if error.status != 409:
            raise
        # Left by an earlier pod of this name (garbage collection may not have run yet).
        custom.patch_namespaced_custom_object(*api, name, body)
    return True


def _cri_time() -> bytes:
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{nanos:09d}Z".encode()


def _cri_records(content: bytes, *, ends_line: bool) -> bytes:
    """``content`` (no newline in it) as CRI records, the last one full (F) if it ends a line."""
    pieces = [content[i : i + CRI_RECORD_BYTES] for i in range(0, len(content), CRI_RECORD_BYTES)]
    pieces = pieces or [b""]
    stamp = _cri_time()
    return b"".join(
        stamp
        + (b" stdout F " if ends_line and i == len(pieces) - 1 else b" stdout P ")
        + piece
        + b"\n"
        for i, piece in enumerate(pieces)
    )


def _copy_output(source: IO[bytes], plain_path: pathlib.Path, cri_path: pathlib.Path) -> None:
    """Copy a pod process's output, as it comes, to its plain log and as CRI records (one per
    line, stamped when read) to its CRI log, until the process and its children close it.
    A line still without its newline waits (at most ``CRI_RECORD_BYTES``) in memory."""
    pending = b""
    with source, plain_path.open("ab", buffering=0) as plain, cri_path.open("ab") as cri:
        while chunk := os.read(source.fileno(), 64 * 1024):
            plain.write(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            records = [_cri_records(line, ends_line=True) for line in lines]
            if len(pending) >= CRI_RECORD_BYTES:
                cut = len(pending) - len(pending) % CRI_RECORD_BYTES
                records.append(_cri_records(pending[:cut], ends_line=False))
                pending = pending[cut:]
            if records:
                cri.write(b"".join(records))
                cri.flush()
        if pending:
            cri.write(_cri_records(pending, ends_line=True))


_BIND_AND_EXEC = (
    "import json, os, subprocess, sys\n"
    "for source, target in json.loads(sys.argv[1]):\n"
    "    os.makedirs(source, exist_ok=True)\n"
    "    os.makedirs(target, exist_ok=True)\n"
    "    subprocess.run(['mount', '--bind', source, target], check=True)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def _host_path_binds(pod: k8s.V1Pod) -> list[tuple[str, str]]:
    """(host directory, mount path) of the container's hostPath mounts, subPath applied."""
    container = pod.spec.containers[0]
    volumes = {v.name: v for v in pod.spec.volumes or []}
    binds = []
    for mount in container.volume_mounts or []:
        volume = volumes.get(mount.name)
        if volume is None or volume.host_path is None:
            continue
        source = pathlib.Path(volume.host_path.path)
        if mount.sub_path:
            source = source / mount.sub_path
        binds.append((str(source), mount.mount_path))
    return binds


def _in_private_mounts(binds: list[tuple[str, str]], argv: list[str]) -> list[str]:
    """Run ``argv`` in a mount namespace of its own where each hostPath volume is bind-mounted
    at its mount path (``/data`` included), as a container would see it; needs root and
    util-linux ``unshare``. The mount points are created on this machine if missing."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        raise RuntimeError("hostPath volumes need root and unshare(1) in the pod runner")
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        sys.executable, "-c", _BIND_AND_EXEC, json.dumps(binds), *argv,
    ]  # fmt: skip


def _key(pod: k8s.V1Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


def describe(pod_runner: PodRunner) -> str:
    """A short text of what runs, for failure messages."""
    lines = []
    for name, entry in pod_runner.running().items():
        lines.append(f"{name} {entry.ip} pid={entry.process.pid}")
    return "\n".join(lines) or "(no pod processes)"
