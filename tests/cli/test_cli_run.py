"""`kubefal run`: a real runner and gateway as subprocesses, called by the real fal_client over TLS.

Each test starts `python -m kubefal_cli run` the way a developer would, waits for the env file,
calls the app with the unmodified `fal_client` in a separate process using only those variables,
then stops the CLI with a signal and checks that no process it started is left.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from tests import offline_wheels

ENV_NAMES = [
    "FAL_RUN_HOST",
    "FAL_QUEUE_RUN_HOST",
    "FAL_REST_HOST",
    "KUBEFAL_REST_HOST",
    "SSL_CERT_FILE",
    "FAL_KEY",
    "FAL_GRPC_HOST",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "KUBEFAL_APP",
]
STARTUP_TIMEOUT = 240.0

CLIENT_SCRIPT = textwrap.dedent(
    """
    import http.server, json, os, queue, sys, threading
    import fal_client

    app = os.environ["KUBEFAL_APP"]
    updates = []
    result = fal_client.subscribe(
        app, arguments={"text": "hello"}, with_logs=True, on_queue_update=updates.append
    )
    logs = [log["message"] for update in updates for log in (getattr(update, "logs", None) or [])]
    direct = fal_client.run(app, arguments={"text": "direct"})
    try:
        fal_client.SyncClient(key="kf0000000000000000:not-the-secret").run(
            app, arguments={"text": "x"}
        )
        refused = None
    except fal_client.client.FalClientHTTPError as error:
        refused = error.status_code

    # A webhook to a receiver on this laptop: kubefal run allows loopback targets.
    hooks = queue.Queue()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            hooks.put(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    handle = fal_client.submit(
        app,
        arguments={"text": "hooked"},
        webhook_url=f"http://127.0.0.1:{server.server_address[1]}/hook",
    )
    hook = hooks.get(timeout=120)
    webhook = {"same_request": hook["request_id"] == handle.request_id, "payload": hook["payload"]}
    print(json.dumps({
        "result": result, "logs": logs, "direct": direct, "refused": refused, "webhook": webhook,
    }))
    """
)


def _clean_environment(**extra: str) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FAL_", "KUBEFAL_")) and name != "SSL_CERT_FILE"
    }
    environment.update(extra)
    return environment


def _matching_processes(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(marker in part for part in process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            continue
    return [process for process in found if process.pid != os.getpid()]


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wheels(workdir: pathlib.Path) -> pathlib.Path:
    """The wheels pip may install from: stand-ins for the test apps' requirements, so
    `kubefal run` installs them as a runner pod does, with no network."""
    wheels = workdir / "wheels"
    if not wheels.is_dir():
        wheels.mkdir()
        offline_wheels.build_wheel(wheels, package="pyfiglet", version="1.0.2", value="figlet")
        offline_wheels.build_wheel(wheels, value="layer one")
        offline_wheels.build_wheel(wheels, package="kubefal_probe_extra", value="layer two")
    return wheels


class RunningCli:
    def __init__(self, *, app: str, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.env_file = workdir / "kubefal.env"
        self.stdout_path = workdir / "cli.stdout"
        self.stderr_path = workdir / "cli.stderr"
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kubefal_cli",
                    "run",
                    app,
                    "--port",
                    "0",
                    "--env-file",
                    str(self.env_file),
                    # The store path puts this test's directory on the gateway's command line,
                    # which is how leftovers are found.
                    "--store",
                    str(workdir / "queue.db"),
                    "--no-logs",
                    "--timeout",
                    str(STARTUP_TIMEOUT),
                ],
                stdout=stdout,
                stderr=stderr,
                env=_clean_environment(
                    KUBEFAL_HOME=str(workdir / "home"),
                    COLUMNS="200",
                    XDG_CACHE_HOME=str(workdir / "cache"),
                    **offline_wheels.offline_pip_env(_wheels(workdir)),
                ),
                cwd=workdir,
            )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def leftovers(self) -> list[psutil.Process]:
        return [p for p in _matching_processes(str(self.workdir)) if p.pid != self.process.pid]

    def kill_everything(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        for process in self.leftovers():
            try:
                process.kill()
            except psutil.Error:
                continue


StartCli = Callable[[str], RunningCli]
WaitFor = Callable[..., None]


@pytest.fixture
def start_cli(tmp_path: pathlib.Path) -> Iterator[StartCli]:
    """Start `kubefal run APP` in this test's directory; kill whatever is left afterwards."""
    started: list[RunningCli] = []

    def start(app: str) -> RunningCli:
        cli = RunningCli(app=app, workdir=tmp_path)
        started.append(cli)
        return cli

    yield start
    for cli in started:
        cli.kill_everything()


def _read_env_file(path: pathlib.Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    assert [line.partition("=")[0] for line in lines] == ENV_NAMES
    return dict(line.split("=", 1) for line in lines)


def run_client(script: str, env: dict[str, str]) -> Any:
    """Run ``script`` (it prints one JSON value) with only the env `kubefal run` printed."""
    call = subprocess.run(
        [sys.executable, "-c", script],
        env=_clean_environment(**env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert call.returncode == 0, call.stderr
    return json.loads(call.stdout)


def wait_env_file(cli: RunningCli, wait_for: WaitFor) -> None:
    """Wait until `kubefal run` has written its env file (or has exited)."""
    wait_for(
        lambda: cli.env_file.exists() or cli.process.poll() is not None,
        timeout=STARTUP_TIMEOUT + 30,
        description="the env file of `kubefal run`",
    )


def started_env(cli: RunningCli, wait_for: WaitFor) -> dict[str, str]:
    """The env `kubefal run` printed, once it has started (and is still running)."""
    wait_env_file(cli, wait_for)
    assert cli.process.poll() is None, cli.stderr()
    return _read_env_file(cli.env_file)


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_fal_client_calls_the_app_with_the_printed_env_and_a_signal_stops_everything(
    start_cli: StartCli, wait_for: WaitFor, apps_dir: pathlib.Path, stop_signal: signal.Signals
) -> None:
    cli = start_cli(str(apps_dir / "echo_app.py::CliEchoApp"))
    env = started_env(cli, wait_for)
    children = psutil.Process(cli.process.pid).children(recursive=True)

    outcome = run_client(CLIENT_SCRIPT, env)
    assert env["KUBEFAL_APP"] == "local/cli-echo-app"
    assert env["FAL_RUN_HOST"].startswith("127.0.0.1:")
    assert pathlib.Path(env["SSL_CERT_FILE"]).is_file()
    assert outcome["result"] == {"text": "hello", "setup_done": True}
    assert "echoing 'hello'" in outcome["logs"]
    assert outcome["direct"] == {"text": "direct", "setup_done": True}
    assert outcome["refused"] == 401
    assert outcome["webhook"] == {
        "same_request": True,
        "payload": {"text": "hooked", "setup_done": True},
    }
    assert {"kubefal_runner", "kubefal_gateway"} <= {
        part for child in children for part in child.cmdline()
    }

    cli.process.send_signal(stop_signal)

    assert cli.process.wait(timeout=90) == 0, cli.stderr()
    wait_for(
        lambda: all(_gone(child) for child in children),
        timeout=30,
        description="every process `kubefal run` started to exit",
    )
    assert cli.leftovers() == []
    assert "nothing is left running" in cli.stderr()
    assert "arguments={'text': 'hello'}" in cli.stderr()


@pytest.mark.slow
def test_a_failing_setup_ends_the_run_with_the_runner_log_and_leaves_nothing_running(
    start_cli: StartCli, wait_for: WaitFor, tmp_path: pathlib.Path
) -> None:
    app = tmp_path / "broken_app.py"
    app.write_text(
        textwrap.dedent(
            """
            import fal

            class BrokenApp(fal.App):
                def setup(self):
                    raise RuntimeError("model weights are missing")

                @fal.endpoint("/")
                def run(self) -> dict:
                    return {}
            """
        )
    )

    cli = start_cli(f"{app}::BrokenApp")

    assert cli.process.wait(timeout=STARTUP_TIMEOUT + 30) == 1
    stderr = cli.stderr()
    assert "the runner exited with code" in stderr
    assert "model weights are missing" in stderr
    assert "Next:" in stderr
    assert not cli.env_file.exists()
    wait_for(
        lambda: cli.leftovers() == [],
        timeout=30,
        description="the gateway and runner of the failed run to exit",
    )


@pytest.mark.slow
def test_even_a_kill_9_of_kubefal_run_takes_its_children_down(
    start_cli: StartCli, wait_for: WaitFor, apps_dir: pathlib.Path
) -> None:
    cli = start_cli(str(apps_dir / "echo_app.py::CliEchoApp"))
    wait_env_file(cli, wait_for)
    children = psutil.Process(cli.process.pid).children(recursive=True)
    assert len(children) >= 2, cli.stderr()

    cli.process.kill()
    cli.process.wait(timeout=30)

    wait_for(
        lambda: all(_gone(child) for child in children),
        timeout=60,
        description="the runner and gateway to exit after their parent was killed",
    )


LAYERS_CLIENT = textwrap.dedent(
    """
    import json, os
    import fal_client

    print(json.dumps(fal_client.run(os.environ["KUBEFAL_APP"], {})))
    """
)


@pytest.mark.slow
def test_run_installs_the_apps_requirement_layers_as_a_runner_pod_does(
    start_cli: StartCli, wait_for: WaitFor, apps_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cli = start_cli(str(apps_dir / "layered_app.py::CliLayeredApp"))
    env = started_env(cli, wait_for)

    answer = run_client(LAYERS_CLIENT, env)
    cache = tmp_path / "cache" / "kubefal" / "venvs"
    first = pathlib.Path(answer["first_file"])
    second = pathlib.Path(answer["second_file"])
    assert answer["first"] == "layer one"
    assert answer["second"] == "layer two"
    # One cached environment per layer, as in a runner pod.
    assert first.is_relative_to(cache)
    assert second.is_relative_to(cache)
    assert first.parents[3] != second.parents[3]
    cli.process.send_signal(signal.SIGTERM)
    assert cli.process.wait(timeout=90) == 0, cli.stderr()
