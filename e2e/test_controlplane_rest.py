"""The control plane's REST half, with the unmodified ``fal`` CLI: ``fal runners logs``.

fal's CLI sends ``fal runners logs`` to the gRPC host over HTTP/1.1 (``GET /runners/<id>``,
``POST /logs/history``, ``POST /logs/stream``); the control plane's TLS front door hands those
connections to its REST routes, which read the runner pod's log through the Kubernetes API.

Pod logs reach the API server from a kubelet. On the local cluster kwok serves the kubelet API
of its nodes (the kubelet's own CRI log reader, ``e2e/cluster.py``) and reads each pod's log
from the file its kwok ``Logs`` object names; the pod runner writes one per pod it runs. Here
the test writes the runner pod's log file itself, in the CRI format containerd writes
(``<RFC 3339 nano> stdout F <line>``), to choose the lines' times. So the API server, its
``pods/log`` path, the control plane and the CLI are all real; only the file's writer stands in
for the container runtime.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import subprocess
import time
import uuid
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s

from e2e import controlplane_harness as harness
from e2e import podrunner
from e2e.conftest import ClusterHandle
from e2e.controlplane_harness import ControlPlaneProcess, create_falapp, create_key
from kubefal_api import apikeys, naming
from kubefal_controlplane import rest_logs
from testkit import waiting

cp_tls = harness.cp_tls
key_namespace = harness.key_namespace
key = harness.key
plane = harness.plane


def _stamp(at: datetime.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # nanoseconds, as containerd writes


def _write(path: pathlib.Path, lines: list[tuple[datetime.datetime, str]]) -> None:
    with path.open("a") as out:
        for at, message in lines:
            out.write(f"{_stamp(at)} stdout F {message}\n")


def _runner_pod(
    api_client: k8s.ApiClient, *, namespace: str, app: str, log_file: pathlib.Path
) -> str:
    """A runner pod of ``app`` whose log (to the API server) is ``log_file``."""
    pod = f"logged-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(api_client)
    created = core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "labels": naming.child_labels(app)},
            "spec": {
                "containers": [{"name": naming.RUNNER_CONTAINER, "image": "kubefal/runner:e2e"}]
            },
        },
    )
    log_file.touch()
    assert podrunner.write_logs_object(
        k8s.CustomObjectsApi(api_client), created, naming.RUNNER_CONTAINER, log_file
    )
    harness.wait_pod_ready(api_client, namespace=namespace, pod=pod)

    def served() -> bool:
        try:
            core.read_namespaced_pod_log(pod, namespace, container=naming.RUNNER_CONTAINER)
        except k8s.ApiException:
            return False  # kwok has not seen the Logs object yet
        return True

    waiting.wait_for(served, timeout=60, description=f"kwok to serve {pod}'s log")
    return pod


def _env(
    plane: ControlPlaneProcess, key: apikeys.ApiKey | None, home: pathlib.Path
) -> dict[str, str]:
    env = harness.client_environment(plane, key=key, home=home)
    # fal's REST client is httpx: it trusts SSL_CERT_FILE (gRPC reads its own variable).
    env["SSL_CERT_FILE"] = str(plane.tls.ca_bundle)
    return env


def _fal(
    plane: ControlPlaneProcess, *args: str, key: apikeys.ApiKey | None, home: pathlib.Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(harness.FAL_CLI), *args],
        env=_env(plane, key, home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _logs_json(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    logs: list[dict[str, Any]] = document["logs"]
    return logs


def _rest(plane: ControlPlaneProcess, key: apikeys.ApiKey | str | None) -> httpx.Client:
    headers = {} if key is None else {"Authorization": f"Key {key}"}
    return httpx.Client(
        base_url=f"https://{plane.host}",
        headers=headers,
        verify=str(plane.tls.ca_bundle),
        timeout=60,
    )


@dataclasses.dataclass
class Runner:
    pod: str
    log_file: pathlib.Path
    messages: list[str]


@pytest.fixture
def runner(
    cluster: ClusterHandle, api_client: k8s.ApiClient, namespace: str, tmp_path: pathlib.Path
) -> Runner:
    """A runner pod whose log holds five lines written after it started."""
    if cluster.local is None or not cluster.local.kubelet_port:
        pytest.skip("pod logs need the local cluster's kwok kubelet API (e2e/cluster.py)")
    create_falapp(api_client, namespace=namespace, name="logged")
    log_file = tmp_path / "runner.log"
    pod = _runner_pod(api_client, namespace=namespace, app="logged", log_file=log_file)
    tag = uuid.uuid4().hex[:6]
    base = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(seconds=1)
    messages = [f"{tag} line {i}" for i in range(5)]
    _write(
        log_file,
        [(base + datetime.timedelta(seconds=i), message) for i, message in enumerate(messages)],
    )
    return Runner(pod, log_file, messages)


def _messages(logs: list[dict[str, Any]]) -> list[str]:
    return [entry["message"] for entry in logs]


def test_fal_runners_logs_prints_the_runner_log_through_the_cli(
    plane: ControlPlaneProcess, runner: Runner, key: apikeys.ApiKey, tmp_path: pathlib.Path
) -> None:
    logs = _logs_json(
        _fal(plane, "runners", "logs", runner.pod, "--output", "json", key=key, home=tmp_path)
    )
    # The API answers newest first (the CLI pages backwards); its JSON keeps that order.
    assert _messages(logs) == list(reversed(runner.messages))
    for entry in logs:
        assert datetime.datetime.fromisoformat(entry["timestamp"]).tzinfo is not None

    text = _fal(plane, "runners", "logs", runner.pod, key=key, home=tmp_path)
    assert text.returncode == 0, text.stdout + text.stderr
    positions = [text.stdout.find(message) for message in runner.messages]
    assert all(position >= 0 for position in positions), text.stdout
    assert positions == sorted(positions), "the CLI prints oldest first"


def test_fal_runners_logs_since_until_search_and_lines(
    plane: ControlPlaneProcess, runner: Runner, key: apikeys.ApiKey, tmp_path: pathlib.Path
) -> None:
    messages = runner.messages
    stamps = {
        line.split(" stdout F ", 1)[1]: line.split(" ", 1)[0]
        for line in runner.log_file.read_text().splitlines()
    }

    def logs(*args: str) -> list[str]:
        result = _fal(
            plane, "runners", "logs", runner.pod, *args, "--output", "json", key=key, home=tmp_path
        )
        return _messages(_logs_json(result))

    # --since is inclusive, --until exclusive (the CLI's cursor semantics).
    assert logs("--since", stamps[messages[1]], "--until", stamps[messages[4]]) == [
        messages[3],
        messages[2],
        messages[1],
    ]
    assert logs("--search", messages[2]) == [messages[2]]
    assert logs("--search", "no such text") == []
    # The CLI keeps the last N items of what the API sends newest first (fal/cli/runners.py
    # _get_logs): with fal's newest-first paging that is the oldest N of the window, and
    # "+N" the newest N (docs/fal-compat.md).
    assert logs("-n", "2") == [messages[1], messages[0]]
    assert logs("-n", "+2") == [messages[4], messages[3]]


def test_logs_history_pages_backwards_with_next_until(
    plane: ControlPlaneProcess, runner: Runner, key: apikeys.ApiKey
) -> None:
    seen: list[str] = []
    until: str | None = None
    with _rest(plane, key) as client:
        for _ in range(10):
            params = {"job_id": runner.pod, "page_size": "2"}
            if until is not None:
                params["until"] = until
            response = client.post("/logs/history", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["items"]) <= 2
            seen += _messages(page["items"])
            until = page["next_until"]
            if until is None:
                break
    assert seen == list(reversed(runner.messages))


def test_fal_runners_logs_follow_streams_new_lines(
    plane: ControlPlaneProcess, runner: Runner, key: apikeys.ApiKey, tmp_path: pathlib.Path
) -> None:
    fresh = f"followed {uuid.uuid4().hex[:8]}"
    seen: list[str] = []
    with harness.fal_following(
        "runners",
        "logs",
        runner.pod,
        "--follow",
        "--output",
        "json",
        env=_env(plane, key, tmp_path),
    ) as lines:

        def shown() -> bool:
            # Written again on each poll: the stream may open after an earlier write.
            _write(runner.log_file, [(datetime.datetime.now(tz=datetime.UTC), fresh)])
            seen[:] = [json.loads(line)["message"] for line in lines()]
            return fresh in seen

        waiting.wait_for(shown, timeout=120, interval=1.0, description="the followed line")
    # Lines older than the follow window (one minute back) came first, then the new ones.
    assert set(runner.messages) <= set(seen)
    assert seen.index(runner.messages[0]) < seen.index(fresh)


def test_a_follow_of_a_quiet_runner_left_by_its_client_leaves_the_port_answering(
    plane: ControlPlaneProcess, runner: Runner, key: apikeys.ApiKey
) -> None:
    """The stream's end (here: its client gone, seen at the next keep-alive) closed the pod
    log's response on the front door's event loop; close() waits for the read in progress,
    so every gRPC and REST connection of the port stood still until the runner logged again."""
    received = b""
    with (
        _rest(plane, key) as client,
        client.stream("POST", "/logs/stream", params={"job_id": runner.pod}) as response,
    ):
        assert response.status_code == 200
        # The five lines written before: the pod log is being read, and then it is quiet.
        chunks = response.iter_raw()
        while runner.messages[-1].encode() not in received:
            received += next(chunks)
    noticed = time.monotonic() + rest_logs.SSE_HEARTBEAT_SECONDS + 5

    def answering_after_the_keep_alive() -> bool:
        with _rest(plane, key) as client:
            health = client.get("/healthz", timeout=10)
        return time.monotonic() > noticed and health.status_code == 200

    waiting.wait_for(
        answering_after_the_keep_alive,
        timeout=120,
        interval=1.0,
        description="the port to answer once the abandoned stream has ended",
    )
    with _rest(plane, key) as client:
        assert client.get(f"/runners/{runner.pod}", timeout=10).json()["runner_id"] == runner.pod


def test_rest_auth_and_bad_input_get_json_detail(
    plane: ControlPlaneProcess,
    runner: Runner,
    key: apikeys.ApiKey,
    api_client: k8s.ApiClient,
    key_namespace: str,
    tmp_path: pathlib.Path,
) -> None:
    pod = runner.pod
    with _rest(plane, None) as anonymous:
        response = anonymous.get(f"/runners/{pod}")
        assert response.status_code == 401
        assert "API key" in response.json()["detail"]
    key_id = str(key).split(":")[0]
    with _rest(plane, f"{key_id}:{'x' * 40}") as wrong:
        response = wrong.post("/logs/history", params={"job_id": pod})
        assert response.status_code == 401
        assert response.json()["detail"]
    other = create_key(api_client, key_namespace=key_namespace, namespaces=["elsewhere"])
    with _rest(plane, other) as outsider:
        for response in (
            outsider.get(f"/runners/{pod}"),
            outsider.post("/logs/history", params={"job_id": pod}),
            outsider.post("/logs/stream", params={"job_id": pod}),
        ):
            assert response.status_code == 404, response.text
            assert pod in response.json()["detail"]
    revoked = create_key(
        api_client, key_namespace=key_namespace, namespaces=["elsewhere"], revoked=True
    )
    with _rest(plane, revoked) as gone:
        assert gone.get(f"/runners/{pod}").status_code == 401

    with _rest(plane, key) as client:
        owned = client.get(f"/runners/{pod}")
        assert owned.status_code == 200, owned.text
        assert owned.json()["runner_id"] == pod and owned.json()["started_at"]
        cases = {
            ("POST", "/logs/history", f"job_id={pod}&page_size=abc"): (400, "page_size"),
            ("POST", "/logs/history", f"job_id={pod}&page_size=0"): (400, "page_size"),
            ("POST", "/logs/history", f"job_id={pod}&since=yesterday"): (400, "since"),
            ("POST", "/logs/history", "job_id=..%2Fetc"): (400, "runner_id"),
            ("POST", "/logs/history", ""): (400, "job_id"),
            ("POST", "/logs/stream", f"job_id={pod}&until=%00"): (400, "until"),
            ("GET", "/runners/" + "A" * 300, ""): (400, "runner_id"),
            ("GET", "/no/such/path", ""): (404, "not served"),
            ("DELETE", "/logs/history", f"job_id={pod}"): (405, "POST"),
            ("GET", "/files/list/..%2F..%2Fetc", ""): (400, "'..'"),
            ("GET", "/files/list/data", ""): (503, "--gateway-rest-url"),
        }
        for (method, path, query), (status, words) in cases.items():
            response = client.request(method, path + ("?" + query if query else ""))
            assert response.status_code == status, (method, path, query, response.text)
            assert words in response.json()["detail"], (method, path, response.text)
        huge = client.get(f"/runners/{pod}", headers={"X-Padding": "p" * 40_000})
        assert huge.status_code == 431
        assert huge.json()["detail"]
    # fal's CLI reports a refusal (no key) and fails.
    refused = _fal(plane, "runners", "logs", pod, key=None, home=tmp_path)
    assert refused.returncode != 0
