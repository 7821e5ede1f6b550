"""Every user mistake ends in a message that says what is wrong and what to do next."""

from __future__ import annotations

import pathlib
import socket
import textwrap

import click.testing
import pytest

from kubefal_cli import main


def _fails(runner: click.testing.CliRunner, *args: str) -> str:
    result = runner.invoke(main.cli, list(args), catch_exceptions=False)
    assert result.exit_code != 0, result.output
    return " ".join(result.output.split())


def _write_app(directory: pathlib.Path, source: str, name: str = "app.py") -> pathlib.Path:
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


@pytest.mark.parametrize("command", ["run", "deploy", "render"])
def test_a_missing_app_file_is_named_with_the_expected_form(
    cli_runner: click.testing.CliRunner, command: str, tmp_path: pathlib.Path
) -> None:
    output = _fails(cli_runner, command, str(tmp_path / "nope.py::MyApp"))

    assert "no such file" in output
    assert "Next: pass the path of the Python file" in output


def test_a_class_the_file_does_not_define_lists_the_ones_it_does(
    cli_runner: click.testing.CliRunner, apps_dir: pathlib.Path
) -> None:
    output = _fails(cli_runner, "render", str(apps_dir / "echo_app.py::Missing"))

    assert "defines no 'Missing'" in output
    assert "CliEchoApp" in output


def test_a_file_with_several_apps_asks_which_one(
    cli_runner: click.testing.CliRunner, tmp_path: pathlib.Path
) -> None:
    app = _write_app(
        tmp_path,
        """
        import fal

        class FirstApp(fal.App):
            @fal.endpoint("/")
            def run(self) -> dict:
                return {}

        class SecondApp(fal.App):
            @fal.endpoint("/")
            def run(self) -> dict:
                return {}
        """,
    )

    output = _fails(cli_runner, "render", str(app))

    assert "several fal.Apps: FirstApp, SecondApp" in output
    assert f"{app}::FirstApp" in output


def test_an_import_error_in_the_app_shows_the_traceback_and_the_fix(
    cli_runner: click.testing.CliRunner, tmp_path: pathlib.Path
) -> None:
    app = _write_app(tmp_path, "import fal\nraise ValueError('bad config value')\n")

    output = _fails(cli_runner, "render", f"{app}::Whatever")

    assert "ValueError: bad config value" in output
    assert "Next: fix the error above" in output


def test_gpus_on_a_cpu_machine_name_the_falapp_field(
    cli_runner: click.testing.CliRunner, tmp_path: pathlib.Path
) -> None:
    app = _write_app(
        tmp_path,
        """
        import fal

        class CpuApp(fal.App):
            machine_type = "M"
            num_gpus = 2

            @fal.endpoint("/")
            def run(self) -> dict:
                return {}
        """,
    )

    output = _fails(cli_runner, "deploy", str(app), "--dry-run")

    assert "cannot be expressed as a FalApp" in output
    assert "numGpus" in output
    assert "Next: change the fal.App attribute" in output


def test_an_invalid_falapp_name_is_refused_before_anything_is_sent(
    cli_runner: click.testing.CliRunner, apps_dir: pathlib.Path
) -> None:
    output = _fails(
        cli_runner, "deploy", str(apps_dir / "echo_app.py"), "--name", "Bad_Name", "--dry-run"
    )

    assert "'Bad_Name' cannot be a FalApp name" in output
    assert "Next: pass --name" in output


def test_run_refuses_a_malformed_key(
    cli_runner: click.testing.CliRunner, apps_dir: pathlib.Path
) -> None:
    output = _fails(cli_runner, "run", str(apps_dir / "echo_app.py"), "--key", "not-a-key")

    assert "--key is not a kubefal API key" in output


def test_run_refuses_a_busy_port_and_suggests_free_ones(
    cli_runner: click.testing.CliRunner, apps_dir: pathlib.Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]

        output = _fails(cli_runner, "run", str(apps_dir / "echo_app.py"), "--port", str(busy))

    assert f"port(s) {busy}" in output
    assert "--port 0" in output


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ([], "say which namespaces"),
        (["--namespace", "a", "--all-namespaces"], "say which namespaces"),
        (["--namespace", "Not_A_Namespace"], "not a valid namespace name"),
    ],
)
def test_keys_create_needs_a_valid_scope(
    cli_runner: click.testing.CliRunner, arguments: list[str], complaint: str
) -> None:
    output = _fails(cli_runner, "keys", "create", *arguments)

    assert complaint in output
    assert "Next:" in output


def test_keys_revoke_refuses_something_that_is_not_a_key_id(
    cli_runner: click.testing.CliRunner,
) -> None:
    output = _fails(cli_runner, "keys", "revoke", "my-key")

    assert "'my-key' is not a key id" in output
    assert "kubefal keys list" in output


def test_keys_without_a_kubeconfig_say_how_to_point_at_a_cluster(
    cli_runner: click.testing.CliRunner, tmp_path: pathlib.Path
) -> None:
    output = _fails(cli_runner, "keys", "list", "--kubeconfig", str(tmp_path / "missing"))

    assert "no usable kubeconfig" in output
    assert "--kubeconfig" in output


def test_an_unreachable_api_server_is_reported_with_what_to_check(
    cli_runner: click.testing.CliRunner, tmp_path: pathlib.Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        textwrap.dedent(
            f"""
            apiVersion: v1
            kind: Config
            clusters:
              - name: gone
                cluster: {{server: "http://127.0.0.1:{closed_port}"}}
            users:
              - name: me
                user: {{token: abc}}
            contexts:
              - name: gone
                context: {{cluster: gone, user: me}}
            current-context: gone
            """
        )
    )

    output = _fails(cli_runner, "keys", "list", "--kubeconfig", str(kubeconfig))

    assert f"cannot reach the API server at http://127.0.0.1:{closed_port}" in output
    assert "kubectl cluster-info" in output


def test_app_files_over_a_config_maps_limit_suggest_an_image(
    cli_runner: click.testing.CliRunner, tmp_path: pathlib.Path
) -> None:
    app = _write_app(
        tmp_path,
        """
        import fal

        class SmallApp(fal.App):
            @fal.endpoint("/")
            def run(self) -> dict:
                return {}
        """,
    )
    (tmp_path / "weights_table.py").write_text("TABLE = " + repr("x" * (1024 * 1024)) + "\n")

    output = _fails(cli_runner, "deploy", str(app), "--dry-run")

    assert "a ConfigMap holds at most 1048576 (1 MiB)" in output
    assert "--image" in output
