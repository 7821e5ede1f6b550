"""``make dev`` with the fal control plane: ``fal deploy``, ``fal_client`` and ``fal apps scale``
using nothing but the lines it writes to its env file.

``python -m e2e.dev --kubeconfig`` runs the whole system on the session's cluster (operator,
gateway, runner pods as processes, control plane); a shell that sources the env file deploys
with the unmodified ``fal`` CLI, calls the app with ``fal_client``, scales it without
restarting its runner, reads and follows the runner's own log with ``fal runners logs`` (the
runner pod's output, through the local cluster's kwok kubelet API), and SIGINT stops everything
``make dev`` started.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import uuid

from kubernetes import client as k8s

from e2e.conftest import ClusterHandle
from e2e.controlplane_harness import FAL_CLI, fal_following, get_falapp
from testkit import waiting

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
APP_FILE = REPO_ROOT / "e2e" / "apps" / "sleepy.py"


def _env_from_file(env_file: pathlib.Path, home: pathlib.Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FAL_", "KUBEFAL_", "GRPC_", "ISOLATE_", "SSL_"))
        and name != "KUBECONFIG"
    }
    for line in env_file.read_text().splitlines():
        name, _, value = line.partition("=")
        env[name] = value
    env.update(HOME=str(home), COLUMNS="250", NO_COLOR="1", NO_PROXY="127.0.0.1,localhost")
    return env


def _run(argv: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _call(namespace: str, tag: str, env: dict[str, str]) -> dict[str, object]:
    called = _run(
        [
            sys.executable,
            "-c",
            "import fal_client, json; print(json.dumps(fal_client.subscribe("
            f"'{namespace}/sleepy-dev', arguments={{'tag': '{tag}'}})))",
        ],
        env,
    )
    result: dict[str, object] = json.loads(called.strip().splitlines()[-1])
    return result


def _follow_shows(pod: str, namespace: str, env: dict[str, str]) -> None:
    """``fal runners logs --follow`` prints a line the runner writes after it started."""
    tag = f"followed-{uuid.uuid4().hex[:8]}"
    with fal_following("runners", "logs", pod, "--follow", env=env, merge_stderr=True) as lines:
        # Written before or after the stream opens: it replays the last minute first.
        assert _call(namespace, tag, env)["tag"] == tag
        waiting.wait_for(
            lambda: any(f"sleeping 0.0s for {tag}" in line for line in lines()),
            timeout=120,
            description="the followed line",
        )


def _runner_pods(api_client: k8s.ApiClient, namespace: str) -> set[tuple[str, str]]:
    pods = k8s.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector="kubefal.io/app=sleepy-dev"
    )
    return {(pod.metadata.name, pod.metadata.uid) for pod in pods.items}


def test_make_dev_serves_fal_deploy_fal_client_and_fal_apps_scale_from_its_env_file(
    cluster: ClusterHandle,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> None:
    env_file = tmp_path / "dev.env"
    log = tmp_path / "make-dev.log"
    e2e_logs.append(log)
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "e2e.dev",
                f"--kubeconfig={cluster.kubeconfig}",
                f"--namespace={namespace}",
                f"--env-file={env_file}",
            ],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        waiting.wait_for(
            lambda: dev.poll() is None and "Ctrl-C" in log.read_text(),
            timeout=180,
            description="make dev to print its lines",
        )
        env = _env_from_file(env_file, tmp_path)
        assert {"FAL_GRPC_HOST", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "FAL_KEY"} <= set(env)

        _run(
            [str(FAL_CLI), "deploy", f"{APP_FILE}::Sleepy", "--app-name", "sleepy-dev"],
            env,
        )
        assert _call(namespace, "dev", env)["tag"] == "dev"
        runners = _runner_pods(api_client, namespace)
        assert len(runners) == 1

        _run(
            [str(FAL_CLI), "apps", "scale", f"{namespace}/sleepy-dev", "--keep-alive", "120"],
            env,
        )
        app = get_falapp(api_client, namespace=namespace, name="sleepy-dev")
        waiting.wait_for(
            lambda: (
                (
                    get_falapp(api_client, namespace=namespace, name="sleepy-dev").get("status")
                    or {}
                ).get("observedGeneration")
                == app["metadata"]["generation"]
            ),
            timeout=60,
            description="the operator to apply the scale",
        )
        listed = json.loads(_run([str(FAL_CLI), "apps", "list", "--json"], env))

        assert app["spec"]["scaling"]["keepAlive"] == 120
        assert _runner_pods(api_client, namespace) == runners  # no runner restarted
        assert [a["keep_alive"] for a in listed["apps"] if a["alias"].endswith("/sleepy-dev")] == [
            120
        ]

        # The runner's own log lines (the app's print, as the runner pod wrote it), while the
        # 120 s keep-alive holds the runner.
        [(pod, _)] = runners
        logs = _run([str(FAL_CLI), "runners", "logs", pod], env)
        assert "sleeping 0.0s for dev" in logs
        _follow_shows(pod, namespace, env)

        # fal files goes to FAL_GRPC_HOST's REST half; the control plane relays it to the
        # gateway's /data (make dev passes --gateway-rest-url).
        weights = tmp_path / "weights.txt"
        weights.write_text(f"weights of {namespace}\n")
        _run([str(FAL_CLI), "files", "upload", str(weights), "/data/dev/weights.txt"], env)
        assert "weights.txt" in _run([str(FAL_CLI), "files", "list", "/data/dev"], env)
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            code = dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            raise
    assert code == 0
