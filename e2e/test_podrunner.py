"""The pod runner plays the container runtime: kwok pods get a real local process.

Full-system tests depend on it: a pod's first container runs on this machine, bound to
the pod's loopback IP, with the pod's env and its ConfigMap volumes, and stops when the
pod goes. Its output is the pod's log, read through the API server from the local cluster's kwok
kubelet API, whole and followed, as ``kubectl logs`` and ``fal runners logs`` read it.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import signal
import subprocess
import urllib.request
import uuid
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e import cluster as local_cluster
from e2e import podrunner
from e2e.conftest import ClusterHandle
from testkit import waiting

SERVER = """
import http.server, os, pathlib
root = pathlib.Path(os.environ["CONTENT"])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (root / self.path.strip("/")).read_bytes()
        self.send_response(200); self.send_header("content-length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((os.environ["KUBEFAL_RUNNER_HOST"], 8080), Handler).serve_forever()
"""


def _deployment() -> dict[str, Any]:
    labels = {"kubefal.io/app": "files"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "files"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "server",
                            "image": "example.invalid/server:1",
                            "command": ["python", "-c", SERVER],
                            "env": [{"name": "CONTENT", "value": "/srv/content"}],
                            "volumeMounts": [{"name": "content", "mountPath": "/srv/content"}],
                        }
                    ],
                    "volumes": [{"name": "content", "configMap": {"name": "content"}}],
                },
            },
        },
    }


def test_each_running_pod_gets_a_process_on_its_ip_until_the_pod_goes(
    api_client: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(api_client)
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="content"), data={"hello.txt": "hi"}),
    )
    apps = k8s.AppsV1Api(api_client)
    with podrunner.PodRunner(
        api_client, namespace=namespace, label_selector="kubefal.io/app=files"
    ) as pods:
        apps.create_namespaced_deployment(namespace, _deployment())

        def serving() -> dict[str, podrunner.PodProcess] | None:
            running = pods.running()
            if len(running) != 2:
                return None
            for entry in running.values():
                url = f"http://{entry.ip}:8080/hello.txt"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.read() != b"hi":
                        return None
            return running

        running = waiting.wait_for(
            serving, timeout=60, description="two pod processes serving the ConfigMap"
        )
        assert len({entry.ip for entry in running.values()}) == 2
        processes = [entry.process for entry in running.values()]
        apps.delete_namespaced_deployment("files", namespace)
        waiting.wait_for(
            lambda: all(process.poll() is not None for process in processes),
            timeout=60,
            description="the processes to stop with their pods",
        )
        assert pods.running() == {}


LOGGER = """
import signal, sys
print("first line", flush=True)
print("x" * 40000, flush=True)
sys.stdout.write("no newline yet"); sys.stdout.flush()
def poke(*_):
    print(" then its newline", flush=True)
    print("poked", file=sys.stderr, flush=True)
signal.signal(signal.SIGUSR1, poke)
while True:
    signal.pause()
"""


def test_a_pod_process_output_is_the_pod_log_through_the_api_server_and_followed(
    cluster: ClusterHandle, api_client: k8s.ApiClient, namespace: str
) -> None:
    if cluster.local is None or not cluster.local.kubelet_port:
        pytest.skip("pod logs need the local cluster's kwok kubelet API (e2e/cluster.py)")
    core = k8s.CoreV1Api(api_client)
    app = f"logger-{uuid.uuid4().hex[:6]}"
    started = datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0)
    with podrunner.PodRunner(
        api_client, namespace=namespace, label_selector=f"kubefal.io/app={app}"
    ) as pods:
        core.create_namespaced_pod(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": app, "labels": {"kubefal.io/app": app}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "main",
                            "image": "example.invalid/logger:1",
                            "command": ["python", "-c", LOGGER],
                        }
                    ],
                },
            },
        )

        def logged() -> str | None:
            try:
                text: str = core.read_namespaced_pod_log(
                    app, namespace, container="main", timestamps=True
                )
            except k8s.ApiException:
                return None  # not running yet, or kwok has not seen its Logs object yet
            return text if "x" * 40000 in text else None

        text = waiting.wait_for(logged, timeout=120, description="the pod's log via the API")
        lines = text.splitlines()
        # The 40000-byte line went through kwok as three CRI records and comes back whole.
        assert [line.split(" ", 1)[1] for line in lines] == ["first line", "x" * 40000]
        for line in lines:
            seconds = line.split(" ", 1)[0].rstrip("Z").partition(".")[0]  # RFC 3339 nano
            assert datetime.datetime.fromisoformat(seconds + "+00:00") >= started
        assert "no newline yet" in (pods.root / f"{namespace}_{app}" / "container.log").read_text()

        stream = core.read_namespaced_pod_log(
            app, namespace, container="main", follow=True, _preload_content=False,
            _request_timeout=(30, 120),
        )  # fmt: skip
        try:
            followed = stream.readline()
            assert followed == b"first line\n"
            entry = pods.running()[f"{namespace}/{app}"]
            os.killpg(entry.process.pid, signal.SIGUSR1)
            assert stream.readline() == b"x" * 40000 + b"\n"
            # The line that waited for its newline, then stderr's line: new output, streamed.
            assert stream.readline() == b"no newline yet then its newline\n"
            assert stream.readline() == b"poked\n"
        finally:
            stream.release_conn()


def test_the_vendored_kwok_logs_crd_is_the_pinned_kwok_one(tmp_path: pathlib.Path) -> None:
    """e2e/crds/kwok.x-k8s.io is kwok's own file at KWOK_VERSION (e2e/versions.env)."""
    if shutil.which("go") is None:
        pytest.skip("needs Go (as make testbin does)")
    pins = dict(
        line.split("=", 1)
        for line in (local_cluster.REPO_ROOT / "e2e" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    version = pins["KWOK_VERSION"]
    downloaded = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/kwok@v{version}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    module = pathlib.Path(json.loads(downloaded.stdout)["Dir"])
    upstream = (module / "kustomize" / "crd" / "bases" / "kwok.x-k8s.io_logs.yaml").read_text()
    vendored = local_cluster.KWOK_LOGS_CRD.read_text()
    assert vendored.startswith(f"# kwok v{version} (KWOK_VERSION in e2e/versions.env)")
    assert vendored.endswith(upstream)
    header = vendored[: -len(upstream)].splitlines()
    assert all(line.startswith("# ") for line in header), "only comments added"
