"""fal's environments and teams against `kubefal run`, with the real `fal` CLI configured only by
the printed lines: an environment (`--env`, `environment_name`) is a namespace, the same one the
app id `fal_client` calls starts with; a team (`--team`) is the namespace the key belongs to
(`GET /users/current`), and any other team gets fal's own "Ignoring explicit team" notice while
the key keeps acting for its namespaces."""

from __future__ import annotations

import json
import pathlib

import httpx
import pytest

from tests.cli.test_cli_run import StartCli, WaitFor, start_cli, started_env
from tests.cli.test_cli_run_controlplane import _fal, _ok

__all__ = ["start_cli"]


@pytest.mark.slow
def test_env_is_the_namespace_of_the_app_id_and_team_the_namespace_of_the_key(
    start_cli: StartCli, wait_for: WaitFor, apps_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cli = start_cli(str(apps_dir / "echo_app.py::CliEchoApp"))
    env = started_env(cli, wait_for)
    home = tmp_path / "fal-home"
    app_id = env["KUBEFAL_APP"]
    namespace, name = app_id.split("/")

    in_env = json.loads(_ok(_fal(env, home, "apps", "list", "--env", namespace, "--json")))
    everywhere = json.loads(_ok(_fal(env, home, "apps", "list", "--json")))
    runners = _ok(_fal(env, home, "apps", "runners", name, "--env", namespace))
    other_env = _fal(env, home, "apps", "list", "--env", "other-team", "--json")
    bad_env = _fal(env, home, "apps", "list", "--env", "Not_A_Namespace", "--json")
    own_team = _fal(env, home, "apps", "list", "--team", namespace, "--json")
    other_team = _fal(env, home, "apps", "list", "--team", "other-team", "--json")

    # The environment is the namespace: the alias is the app id fal_client calls.
    assert [(a["alias"], a["environment_name"]) for a in in_env["apps"]] == [(app_id, namespace)]
    assert [a["alias"] for a in everywhere["apps"]] == [app_id]
    assert f"{name}-runner-" in runners  # a bare name with --env names <env>/<name>
    assert other_env.returncode != 0
    assert "may not see or change apps in namespace 'other-team'" in (
        other_env.stdout + other_env.stderr
    )
    assert bad_env.returncode != 0
    assert "environment_name: 'Not_A_Namespace' is not a namespace name" in (
        bad_env.stdout + bad_env.stderr
    )
    # The key's team is its namespace: no notice; another team is ignored as fal does for keys.
    assert own_team.returncode == 0, own_team.stdout + own_team.stderr
    assert "Ignoring explicit team" not in own_team.stdout + own_team.stderr
    assert [a["alias"] for a in json.loads(own_team.stdout)["apps"]] == [app_id]
    assert other_team.returncode == 0, other_team.stdout + other_team.stderr
    assert "Ignoring explicit team other-team because key is used" in (
        other_team.stdout + other_team.stderr
    )
    # Both REST hosts answer who a key is: the gateway's (FAL_REST_HOST, what the CLI asks
    # here) and the control plane's (FAL_GRPC_HOST's port, when FAL_REST_HOST is unset).
    key_id = env["FAL_KEY"].split(":", 1)[0]
    with httpx.Client(verify=env["SSL_CERT_FILE"], timeout=30) as http:
        for host in (env["FAL_REST_HOST"], env["FAL_GRPC_HOST"]):
            url = f"https://{host}/users/current"
            account = http.get(url, headers={"Authorization": f"Key {env['FAL_KEY']}"})
            assert account.status_code == 200, (host, account.text)
            assert account.json()["user_id"] == key_id
            assert account.json()["nickname"] == namespace
            anonymous = http.get(url)
            assert anonymous.status_code == 401 and anonymous.json()["detail"], host
