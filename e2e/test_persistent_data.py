"""persistentData on the local control plane: the operator mounts the namespace's share of the
data volume at /data in each runner (the pod runner gives each runner process its own mount
namespace with the hostPath bound at /data, as a container would have it), the gateway serves
the same directory to fal.sync_dir, and weights downloaded once are found by the next runner."""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from e2e import system as whole
from e2e.conftest import ClusterHandle
from testkit import waiting

APP_SOURCE = pathlib.Path(__file__).with_name("apps") / "data_app.py"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the pod runner needs root to bind /data in a mount namespace"
)


class WeightsServer:
    """Plain HTTP on 127.0.0.1 serving one weights file and counting its downloads."""

    def __init__(self, payload: bytes) -> None:
        self.downloads = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.downloads += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.safetensors"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def weights() -> Iterator[WeightsServer]:
    server = WeightsServer(os.urandom(256 * 1024))
    yield server
    server.close()


def test_sync_dir_and_weights_on_data_survive_runners(
    cluster: ClusterHandle,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
    weights: WeightsServer,
) -> None:
    data_root = tmp_path / "system" / "data"  # the data volume running_system configures
    core = k8s.CoreV1Api(api_client)
    key = whole.create_key(
        api_client, key_namespace=namespace, namespaces=[namespace], description="e2e /data"
    )
    with whole.running_system(
        cluster.kubeconfig,
        workdir=tmp_path / "system",
        namespaces=[namespace],
        key_namespace=namespace,
    ) as system:
        e2e_logs.extend(system.logs)
        local = tmp_path / "model"
        local.mkdir()
        (local / "config.json").write_text('{"layers": 4}')
        environment = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("FAL_", "KUBEFAL_"))
        }
        synced = subprocess.run(
            [sys.executable, "-c", "import fal; print(fal.sync_dir('" + str(local) + "', "
             "'/data/models/m'))"],
            env={
                **environment,
                "FAL_GRPC_HOST": f"127.0.0.1:{system.rest_port}",
                "FAL_KEY": str(key),
                "SSL_CERT_FILE": str(system.ca),
            },
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert synced.returncode == 0, synced.stderr
        assert (data_root / namespace / "models" / "m" / "config.json").exists()

        whole.deploy_app(
            api_client,
            namespace,
            name="data-app",
            source=APP_SOURCE,
            app="DataApp",
            persistentData=True,
            scaling={"minConcurrency": 1},
        )
        call = textwrap.dedent(
            f"""
            import fal_client, json
            print(json.dumps(fal_client.run("{namespace}/data-app",
                                            {{"weights_url": "{weights.url}"}})))
            """
        )
        whole.wait_for_runners(system, 1)
        first = json.loads(system.run_client(call).strip().splitlines()[-1])
        assert first["synced"] == '{"layers": 4}'
        assert first["hf_home"] == "/data/.cache/huggingface"
        assert first["weights"].startswith("/data/.fal/model_weights/")
        assert first["weights_size"] == 256 * 1024
        assert weights.downloads == 1
        stored = data_root / namespace / first["weights"].removeprefix("/data/")
        assert stored.is_dir()

        (old_pod,) = system.pods.running()
        core.delete_namespaced_pod(old_pod.split("/")[1], namespace, grace_period_seconds=0)
        waiting.wait_for(
            lambda: [p for p in system.pods.running() if p != old_pod] != [],
            timeout=120,
            description="a new runner after the first one was deleted",
        )
        whole.wait_for_runners(system, 1)
        second = json.loads(system.run_client(call).strip().splitlines()[-1])
        assert second["pod"] != first["pod"]
        assert second["weights"] == first["weights"]
        assert second["weights_size"] == 256 * 1024
        assert weights.downloads == 1  # found on /data, not fetched again
        e2e_logs.extend(system.pods.logs())
