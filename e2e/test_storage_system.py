"""fal's storage on the local control plane, as issue 11's acceptance lists it: the real,
unmodified fal_client (beside the kubefal_hosts hook, environment only) uploads a 20 MB file with
``upload_file`` and an app downloads and hashes it; ``realtime()`` with its default arguments
(a token from ``POST /tokens/``); fal.toolkit's KV store shared by two runners. The app names no
key: its runners upload and use the KV store with the operator's runner key.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Iterator

import httpx
import pytest
from kubernetes import client as k8s

from e2e import system as whole
from e2e.conftest import ClusterHandle
from kubefal_api import apikeys
from testkit import waiting
from tests.gateway import storage_harness

APP_SOURCE = pathlib.Path(__file__).parents[1] / "tests" / "gateway" / "apps" / "files_app.py"


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """An interpreter with fal_client and the kubefal_hosts hook, as `pip install kubefal`."""
    return storage_harness.hooked_python(tmp_path_factory.mktemp("client"))


@pytest.fixture
def system_with_files_app(
    cluster: ClusterHandle,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> Iterator[tuple[whole.System, apikeys.ApiKey]]:
    client_key = whole.create_key(
        api_client, key_namespace=namespace, namespaces=[namespace], description="e2e client"
    )
    with whole.running_system(
        cluster.kubeconfig,
        workdir=tmp_path / "system",
        namespaces=[namespace],
        key_namespace=namespace,
    ) as system:
        e2e_logs.extend(system.logs)
        whole.deploy_app(
            api_client,
            namespace,
            name="files",
            source=APP_SOURCE,
            app="FilesApp",
            auth="private",
            scaling={"minConcurrency": 2, "maxConcurrency": 2},
        )
        whole.wait_for_runners(system, 2, timeout=300)
        try:
            yield system, client_key
        finally:
            e2e_logs.extend(system.pods.logs())


def _run(python: pathlib.Path, system: whole.System, key: apikeys.ApiKey, script: str) -> object:
    return storage_harness.run_python(python, script, env=system.client_env(str(key)))


def test_upload_file_realtime_and_kv_across_runners(
    system_with_files_app: tuple[whole.System, apikeys.ApiKey],
    python: pathlib.Path,
    namespace: str,
    tmp_path: pathlib.Path,
) -> None:
    system, key = system_with_files_app
    app = f"{namespace}/files"
    rest = f"https://127.0.0.1:{system.rest_port}"

    # 20 MB through upload_file; the app (inside a runner) downloads the URL and hashes it.
    path = tmp_path / "weights.bin"
    data = os.urandom(20 * 1024 * 1024)
    path.write_bytes(data)
    result = _run(
        python,
        system,
        key,
        f"""
        import fal_client
        url = fal_client.upload_file({str(path)!r})
        emit({{"url": url, "hash": fal_client.run({app!r}, {{"url": url}}, path="/hash")}})
        """,
    )
    assert isinstance(result, dict)
    assert result["url"].startswith(f"{rest}/files/{namespace}/")
    assert result["hash"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    # realtime() with its defaults: use_jwt=True, a token from POST /tokens/.
    echoed = _run(
        python,
        system,
        key,
        f"""
        import fal_client
        with fal_client.realtime({app!r}) as connection:
            connection.send({{"text": "abc"}})
            emit(connection.recv())
        """,
    )
    assert echoed == {"sha256": hashlib.sha256(b"abc").hexdigest(), "size": 3}

    # The KV store across the two runners (each called on its pod IP, as the gateway would).
    first, second = (f"http://{pod.ip}:8080" for pod in system.pods.running().values())
    with httpx.Client(timeout=120, trust_env=False) as http:

        def kv(runner: str, **body: str) -> dict[str, object]:
            """A runner busy with another request (one at a time) answers 503: until it is free."""
            answers: list[httpx.Response] = []

            def answered() -> bool:
                answers.append(http.post(f"{runner}/kv", json=body))
                return answers[-1].status_code != 503

            waiting.wait_for(answered, timeout=120, description=f"{runner} free for /kv")
            answers[-1].raise_for_status()
            result: dict[str, object] = answers[-1].json()
            return result

        written = kv(first, op="set", key="rev", value="v7")
        read = kv(second, op="get", key="rev")
        kv(second, op="delete", key="rev")
        gone = kv(first, op="get", key="rev")
    assert written["value"] == "v7" and read["value"] == "v7", json.dumps([written, read])
    assert written["pid"] != read["pid"]
    assert gone["value"] is None
