"""The pod runner plays the container runtime: kwok pods get a real local process.

Full-system tests depend on it: a pod's first container runs on this machine, bound to
the pod's loopback IP, with the pod's env and its ConfigMap volumes, and stops when the
pod goes.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from kubernetes import client as k8s

from e2e import podrunner
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
