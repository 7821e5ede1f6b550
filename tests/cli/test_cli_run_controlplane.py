"""`kubefal run` serves fal's control plane for its app: the real `fal` CLI and
`SyncServerlessClient`, configured only by the printed lines (`FAL_GRPC_HOST`,
`GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`, `FAL_KEY`, an empty HOME so no fal profile is read), list,
scale and restart the app, read its runner's log, manage keys and secrets, and reach its
`/data` with `fal.sync_dir` and `fal files`; weights one runner writes to /data are found by
the next."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import urllib.request
from typing import Any

import pytest

from tests.cli.test_cli_run import (
    StartCli,
    WaitFor,
    _clean_environment,
    run_client,
    start_cli,
    started_env,
)

__all__ = ["start_cli"]

FAL_CLI = pathlib.Path(sys.executable).parent / "fal"
APP = "local/cli-echo-app"


def _fal(
    env: dict[str, str], home: pathlib.Path, *arguments: str
) -> subprocess.CompletedProcess[str]:
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [str(FAL_CLI), *arguments],
        env=_clean_environment(**env, HOME=str(home), COLUMNS="250"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _sdk(env: dict[str, str], home: pathlib.Path, body: str) -> Any:
    """Run ``body`` with ``client = SyncServerlessClient()``; it calls ``emit(value)``."""
    script = textwrap.dedent(
        """
        import json, os, sys
        from fal.api.client import SyncServerlessClient
        client = SyncServerlessClient()
        result_stream, sys.stdout = sys.stdout, sys.stderr  # the SDK prints progress
        def emit(value):
            print(json.dumps(value), file=result_stream)
        """
    ) + textwrap.dedent(body)
    home.mkdir(exist_ok=True)
    return run_client(script, {**env, "HOME": str(home)})


def _follow_until(
    env: dict[str, str], home: pathlib.Path, runner_id: str, wait_for: WaitFor, text: str
) -> list[str]:
    """``fal runners logs --follow``: call the app with ``text`` while it streams, and return
    what it printed once the runner's line for that call came (new output, followed)."""
    follower = subprocess.Popen(
        [str(FAL_CLI), "runners", "logs", runner_id, "--follow"],
        env=_clean_environment(**env, HOME=str(home), COLUMNS="250"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    printed: list[str] = []
    try:
        assert follower.stdout is not None
        stdout = follower.stdout
        os.set_blocking(stdout.fileno(), False)
        run_client(
            "import json, os, fal_client\n"
            f"print(json.dumps(fal_client.run(os.environ['KUBEFAL_APP'], {{'text': {text!r}}})))",
            env,
        )

        def shown() -> bool:
            assert follower.poll() is None, printed
            while line := stdout.readline():
                printed.append(line)
            return any(f"echoing {text!r}" in line for line in printed)

        wait_for(shown, timeout=60, description="the followed line")
    finally:
        follower.terminate()
        follower.wait(timeout=30)
    return printed


def _run_dir(workdir: pathlib.Path) -> pathlib.Path:
    (run_dir,) = (workdir / "home" / "runs").iterdir()
    return run_dir


def _gateway_scaling(workdir: pathlib.Path, app: str) -> dict[str, Any]:
    state = json.loads((_run_dir(workdir) / "local-run.json").read_text())
    url = f"{state['gateway_admin_url']}/_kubefal/apps/{app}/scaling"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return dict(json.loads(response.read()))


@pytest.mark.slow
def test_sdk_and_fal_cli_list_scale_and_manage_keys_of_the_app_of_kubefal_run(
    start_cli: StartCli, wait_for: WaitFor, apps_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cli = start_cli(str(apps_dir / "echo_app.py::CliEchoApp"))
    env = started_env(cli, wait_for)
    home = tmp_path / "fal-home"
    assert env["FAL_GRPC_HOST"].startswith("localhost:")
    assert env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] == env["SSL_CERT_FILE"]
    wait_for(
        lambda: _gateway_scaling(tmp_path, APP).get("readyRunners") == 1,
        timeout=60,
        description="the gateway to see the runner ready",
    )

    before = _sdk(
        env,
        home,
        f"""
        apps = client.apps.list()
        runners = client.apps.runners({APP!r})
        everywhere = client.runners.list()
        scaled = client.apps.scale({APP!r}, keep_alive=33, max_concurrency=7, min_concurrency=1)
        after = client.apps.runners({APP!r}, state=["running", "idle"])
        emit({{
            "apps": [(a.alias, a.auth_mode, a.machine_types, a.max_multiplexing, a.keep_alive,
                      a.max_concurrency, a.active_runners, a.environment_name) for a in apps],
            "runners": [(r.alias, r.runner_id, r.state.name, r.machine_type) for r in runners],
            "everywhere": [r.runner_id for r in everywhere],
            "scaled": [scaled.keep_alive, scaled.max_concurrency, scaled.min_concurrency,
                       scaled.max_multiplexing],
            "after": [r.runner_id for r in after],
        }})
        """,
    )

    assert before["apps"] == [
        [APP, "shared", ["S"], 2, 120, 4, 1, "local"],
    ]
    ((alias, runner_id, state, machine),) = before["runners"]
    assert (alias, state, machine) == (APP, "IDLE", "S")
    assert runner_id.startswith("cli-echo-app-runner-")
    assert before["everywhere"] == [runner_id]
    assert before["scaled"] == [33, 7, 1, 2]
    # Scaling-only fields never restart the runner; the gateway applies them at once.
    assert before["after"] == [runner_id]
    wait_for(
        lambda: _gateway_scaling(tmp_path, APP).get("desiredRunners") == 1,
        timeout=30,
        description="the gateway to want minConcurrency=1 runner",
    )

    listed = json.loads(_ok(_fal(env, home, "apps", "list", "--json")))
    runners_table = _ok(_fal(env, home, "runners", "list"))
    assert [(a["alias"], a["keep_alive"], a["min_concurrency"]) for a in listed["apps"]] == [
        (APP, 33, 1)
    ]
    assert runner_id[:8] in runners_table

    created = _ok(_fal(env, home, "keys", "create", "--scope", "ADMIN", "--desc", "ci"))
    new_key = created.split("FAL_KEY='")[1].split("'")[0]
    keys_table = _ok(_fal(env, home, "keys", "list"))
    called = run_client(
        "import json, os, fal_client\n"
        "print(json.dumps(fal_client.run(os.environ['KUBEFAL_APP'], {'text': 'new key'})))",
        {**env, "FAL_KEY": new_key},
    )
    _ok(_fal(env, home, "keys", "revoke", new_key.split(":")[0]))
    refused = run_client(
        "import json, os, fal_client\n"
        "try:\n"
        "    fal_client.run(os.environ['KUBEFAL_APP'], {'text': 'revoked'}); print('null')\n"
        "except fal_client.client.FalClientHTTPError as error:\n"
        "    print(json.dumps(error.status_code))",
        {**env, "FAL_KEY": new_key},
    )
    logs = _ok(_fal(env, home, "runners", "logs", runner_id))
    _follow_until(env, home, runner_id, wait_for, "followed")
    deploy = _fal(env, home, "deploy", str(apps_dir / "echo_app.py") + "::CliEchoApp")
    delete = _fal(env, home, "apps", "delete", APP)

    assert new_key.split(":")[0] in keys_table
    assert called == {"text": "new key", "setup_done": True}
    assert refused == 401
    assert "echoing 'new key'" in logs
    assert deploy.returncode != 0
    assert "does not deploy apps" in deploy.stdout + deploy.stderr
    assert "make dev" in deploy.stdout + deploy.stderr
    assert delete.returncode != 0 and "Ctrl-C" in delete.stdout + delete.stderr

    # Runner configuration replaces the runner (as it rolls runners on a cluster), and so
    # does fal apps rollout; each replacement serves.
    def current_runner() -> list[Any]:
        return list(
            _sdk(
                env,
                home,
                f"emit([(r.runner_id, r.state.name) for r in client.apps.runners({APP!r})])",
            )
        )

    def replaced(previous: str) -> bool:
        runners = current_runner()
        return len(runners) == 1 and runners[0][0] != previous and runners[0][1] == "IDLE"

    multiplexed = _sdk(
        env, home, f"emit(client.apps.scale({APP!r}, max_multiplexing=3).max_multiplexing)"
    )
    wait_for(lambda: replaced(runner_id), timeout=240, description="a runner with multiplexing 3")
    ((second_id, _),) = current_runner()
    second_pid = int(second_id.rsplit("-", 1)[1])
    second_environment = pathlib.Path(f"/proc/{second_pid}/environ").read_bytes().split(b"\0")
    _ok(_fal(env, home, "apps", "rollout", APP))
    wait_for(lambda: replaced(second_id), timeout=240, description="fal apps rollout's runner")
    served = run_client(
        "import json, os, fal_client\n"
        "print(json.dumps(fal_client.run(os.environ['KUBEFAL_APP'], {'text': 'rolled'})))",
        env,
    )

    assert multiplexed == 3
    assert b"KUBEFAL_MAX_MULTIPLEXING=3" in second_environment
    assert served == {"text": "rolled", "setup_done": True}
    gateway_app = json.loads((_run_dir(tmp_path) / "gateway.json").read_text())["apps"][0]
    assert gateway_app["maxMultiplexing"] == 3


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0, reason="/data in kubefal run needs a private mount namespace (root)"
)
def test_sync_dir_secrets_and_weights_on_data_survive_a_runner_restart(
    start_cli: StartCli, wait_for: WaitFor, apps_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cli = start_cli(str(apps_dir / "data_app.py::DataApp"))
    env = started_env(cli, wait_for)
    home = tmp_path / "fal-home"
    app = env["KUBEFAL_APP"]
    synced = tmp_path / "to-sync"
    synced.mkdir()
    (synced / "hello.txt").write_text("synced through fal.sync_dir")

    first = _sdk(
        env,
        home,
        f"""
        import fal, fal_client
        fal.sync_dir({str(synced)!r}, "/data/synced")
        result = fal_client.run(os.environ["KUBEFAL_APP"], {{"path": "synced/hello.txt"}})
        emit({{**result, "runners": [r.runner_id for r in client.runners.list()]}})
        """,
    )
    files = _ok(_fal(env, home, "files", "list", "/data/synced"))
    _ok(_fal(env, home, "secrets", "set", "KUBEFAL_TEST_SECRET=s3cret"))
    (runner_id,) = first["runners"]
    _ok(_fal(env, home, "runners", "kill", runner_id))

    def replaced() -> bool:
        listed = _sdk(
            env, home, "emit([(r.runner_id, r.state.name) for r in client.runners.list()])"
        )
        return (
            len(listed) == 1 and listed[0][0] != runner_id and listed[0][1] in ("IDLE", "RUNNING")
        )

    wait_for(replaced, timeout=240, description="kubefal run to replace the killed runner")
    second = run_client(
        "import json, os, fal_client\n"
        "app = os.environ['KUBEFAL_APP']\n"
        "print(json.dumps(fal_client.run(app, {'path': 'synced/hello.txt'})))",
        env,
    )

    assert app == "local/data-app"
    assert first["content"] == "synced through fal.sync_dir"
    assert first["downloaded_at_setup"] is True
    assert first["hf_home"] == "/data/.cache/huggingface"
    assert "hello.txt" in files
    assert second["pid"] != first["pid"]
    assert second["downloaded_at_setup"] is False
    assert second["weights"] == f"weights written by runner {first['pid']}"
    assert second["secret"] == "s3cret"
    assert first["secret"] == ""
    data_dir = tmp_path / "home" / "data" / "local"
    assert (data_dir / "weights" / "model.bin").read_text() == second["weights"]
    assert (data_dir / "synced" / "hello.txt").is_file()
