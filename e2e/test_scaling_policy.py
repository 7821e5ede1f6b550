"""spec.scaling.policy reaches the scaling decision: countStarting counts a starting runner.

On the whole system (FalApp → operator → pods → runner processes → gateway → fal_client), an
app whose runners start only when the test opens a gate (e2e/apps/gated.py) is primed with
one request, so the gateway knows its cold start and request time. Then, with the gate closed,
one request starts a runner that stays starting, and three more arrive: fal's formula would ask
for four runners; under countStarting the starting runner takes them all before a new one could
be ready, so the app asks for one. Switching the live FalApp to ``policy: fal`` asks for four.
Behaviour, not timing: the test waits for conditions and asserts the decisions and results.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import IO, Any

import pytest
from kubernetes import client as k8s

from e2e import system as whole
from e2e.conftest import ClusterHandle
from testkit import waiting

APP_SOURCE = pathlib.Path(__file__).with_name("apps") / "gated.py"
NAME = "gated"
LATER = 3
"""Requests that arrive while the first runner is starting."""

CLIENT = """
import json, sys, fal_client
app = sys.argv[1]
first = fal_client.submit(app, arguments={"tag": "first"})
print("submitted", flush=True)
sys.stdin.readline()
later = [fal_client.submit(app, arguments={"tag": f"later-{i}"}) for i in range(int(sys.argv[2]))]
print("submitted", flush=True)
print(json.dumps([h.get()["tag"] for h in [first, *later]]), flush=True)
"""


@pytest.fixture
def gate() -> Iterator[pathlib.Path]:
    """A file path the runner processes see as it is: not under /tmp, /var or /app, which the
    pod runner maps to the pod's own volumes (e2e/podrunner.py). It exists again when the test
    ends, so no runner is left waiting in setup() while the system stops."""
    parent = whole.REPO_ROOT / ".kubefal" / "gates"
    parent.mkdir(parents=True, exist_ok=True)
    directory = pathlib.Path(tempfile.mkdtemp(dir=parent))
    yield directory / "gate"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def running(
    cluster: ClusterHandle,
    namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
    gate: pathlib.Path,  # set up before the system, so removed only after it stopped
) -> Iterator[whole.System]:
    with whole.running_system(
        cluster.kubeconfig, workdir=tmp_path / "system", namespaces=[namespace]
    ) as system:
        e2e_logs.extend(system.logs)
        yield system
        e2e_logs.extend(system.pods.logs())


def _deploy(api_client: k8s.ApiClient, namespace: str, gate: pathlib.Path) -> None:
    whole.deploy_app(
        api_client,
        namespace,
        name=NAME,
        source=APP_SOURCE,
        app="Gated",
        env=[{"name": "KUBEFAL_TEST_GATE", "value": str(gate)}],
        scaling={
            "minConcurrency": 0,
            "maxConcurrency": 10,
            "maxMultiplexing": 1,
            "keepAlive": 1,
            "policy": "countStarting",
        },
    )


def _signal(system: whole.System, namespace: str) -> dict[str, Any]:
    url = system.admin_url(f"/_kubefal/apps/{namespace}/{NAME}/scaling")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError:
        return {}  # the gateway has not seen the FalApp yet


def _replicas(api_client: k8s.ApiClient, namespace: str) -> int | None:
    try:
        deployment = k8s.AppsV1Api(api_client).read_namespaced_deployment(NAME, namespace)
    except k8s.ApiException:
        return None
    return int(deployment.spec.replicas or 0)


def _wait_signal(
    system: whole.System, namespace: str, check: Any, description: str, timeout: float = 180
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def matches() -> bool:
        found.clear()
        found.update(_signal(system, namespace))
        return bool(found) and bool(check(found))

    waiting.wait_for(
        matches,
        timeout=timeout,
        interval=0.05,
        description=description,
        describe_last=lambda: f"last signal: {found}\n{system.describe()}",
    )
    return dict(found)


def _read_line(stream: IO[str]) -> str:
    line = stream.readline()
    assert line, "the fal_client process ended early"
    return line.strip()


def test_count_starting_counts_a_starting_runner_and_switching_to_fal_asks_for_more(
    running: whole.System, api_client: k8s.ApiClient, namespace: str, gate: pathlib.Path
) -> None:
    gate.touch()
    app_id = f"{namespace}/{NAME}"
    _deploy(api_client, namespace, gate)
    primed = running.run_client(
        f"import fal_client; print(fal_client.subscribe('{app_id}', arguments={{'tag': 'p'}}))",
        timeout=180,
    )
    assert "'tag': 'p'" in primed
    known = _wait_signal(
        running,
        namespace,
        lambda s: (
            s["meanRequestSeconds"] is not None
            and s["coldStartSeconds"] is not None
            and s["desiredRunners"] == 0
            and s["runners"] == 0
        ),
        "the gateway to know the app's request and cold-start times, back at zero",
    )
    assert known["policy"] == "countStarting"
    # The next pod may get the same IP: the primed runner's process must be gone, or it would
    # answer for the new pod.
    waiting.wait_for(
        lambda: not running.pods.running(), timeout=120, description="no runner process left"
    )

    gate.unlink()  # from now on a runner stays starting until the gate opens
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, app_id, str(LATER)],
        env=running.client_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None
    try:
        assert _read_line(client.stdout) == "submitted"
        # The starting runner's head start grows until it covers the requests to come.
        _wait_signal(
            running,
            namespace,
            lambda s: s["startingRunners"] == 1 and s["coveredRequests"] >= 1 + LATER + 0.5,
            "one starting runner covering the requests to come",
        )
        client.stdin.write("go\n")
        client.stdin.flush()
        assert _read_line(client.stdout) == "submitted"
        counted = _wait_signal(
            running, namespace, lambda s: s["queued"] == 1 + LATER, "all requests queued"
        )
        replicas_counted = _replicas(api_client, namespace)

        k8s.CustomObjectsApi(api_client).patch_namespaced_custom_object(
            "kubefal.io",
            "v1alpha1",
            namespace,
            "falapps",
            NAME,
            {"spec": {"scaling": {"policy": "fal"}}},
        )
        fal_formula = _wait_signal(
            running,
            namespace,
            lambda s: s["policy"] == "fal" and s["desiredRunners"] == 1 + LATER,
            "fal's formula: one runner per queued request",
        )
        waiting.wait_for(
            lambda: _replicas(api_client, namespace) == 1 + LATER,
            timeout=120,
            description="the operator to follow fal's formula",
        )

        gate.touch()
        tags = json.loads(_read_line(client.stdout))
        assert client.wait(timeout=120) == 0
    finally:
        gate.touch()
        if client.poll() is None:
            client.kill()
            client.wait()

    assert counted["desiredRunners"] == 1
    assert counted["startingRunners"] == 1
    assert replicas_counted == 1
    assert fal_formula["queued"] == 1 + LATER
    assert tags == ["first", *(f"later-{i}" for i in range(LATER))]
