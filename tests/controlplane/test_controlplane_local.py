"""The control plane's kubefal-run backend (kubefal_controlplane/local.py) over real files and
a real process: `fal apps scale` rewrites the run's FalApp and the gateway's static config and
SIGHUPs the gateway; keys made with `fal keys create` reach that config; runner log lines get
the time they carry, or the previous line's."""

from __future__ import annotations

import datetime
import json
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from kubefal_api import apikeys, localrun
from kubefal_controlplane import errors, local, local_logs, rest_logs, runner_logs
from kubefal_controlplane import settings as settings_module
from testkit import waiting


@pytest.fixture
def gateway_stand_in() -> Iterator[subprocess.Popen[bytes]]:
    """A process that exits with SIGHUP's signal number when it gets SIGHUP (its default
    action restored: a suite started under ``nohup`` passes SIGHUP ignored to its children)."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def _run_dir(tmp_path: pathlib.Path, gateway_pid: int) -> tuple[pathlib.Path, apikeys.ApiKey]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    key = apikeys.generate_key()
    record = apikeys.new_record(key=key, namespaces=["local"], description="kubefal run")
    gateway_config = run_dir / "gateway.json"
    localrun.write_json(
        gateway_config,
        {
            "apps": [
                {"id": "local/app", "auth": "shared", "runners": ["http://127.0.0.1:9"]},
            ],
            "keys": [localrun.gateway_key_entry(record)],
        },
    )
    localrun.write_json(
        run_dir / localrun.RUN_STATE,
        localrun.RunState(
            app_id="local/app",
            gateway_config=str(gateway_config),
            gateway_pid=gateway_pid,
            gateway_admin_url="http://127.0.0.1:9",
            run_key=apikeys.string_data(record),
            local_dir=str(tmp_path / "local"),
        ).to_json(),
    )
    localrun.write_json(
        run_dir / localrun.FALAPP,
        {
            "apiVersion": "kubefal.io/v1alpha1",
            "kind": "FalApp",
            "metadata": {"name": "app", "namespace": "local", "uid": "u", "generation": 1},
            "spec": {"app": "app.py::App", "machineTypes": ["S"], "scaling": {"keepAlive": 5}},
        },
    )
    return run_dir, key


def _backend(run_dir: pathlib.Path) -> local.LocalRun:
    return local.LocalRun(run_dir, settings_module.Settings(local_credentials=True))


def test_scale_writes_the_falapp_and_the_gateway_config_then_sighups_the_gateway(
    tmp_path: pathlib.Path, gateway_stand_in: subprocess.Popen[bytes]
) -> None:
    run_dir, _ = _run_dir(tmp_path, gateway_stand_in.pid)
    backend = _backend(run_dir)

    app = backend.patch_falapp(
        "local",
        "app",
        {"metadata": {"annotations": {"a": "b"}}, "spec": {"scaling": {"minConcurrency": 1}}},
    )

    assert app["spec"]["scaling"] == {"keepAlive": 5, "minConcurrency": 1}
    assert backend.get_falapp("local", "app") == app
    (entry,) = json.loads((run_dir / "gateway.json").read_text())["apps"]
    assert entry["scaling"] == {"keepAlive": 5, "minConcurrency": 1}
    assert gateway_stand_in.wait(timeout=30) == -signal.SIGHUP


def test_a_created_key_reaches_the_gateway_config_and_the_run_key_cannot_be_revoked(
    tmp_path: pathlib.Path, gateway_stand_in: subprocess.Popen[bytes]
) -> None:
    run_dir, run_key = _run_dir(tmp_path, gateway_stand_in.pid)
    backend = _backend(run_dir)
    made = apikeys.new_record(key=apikeys.generate_key(), namespaces=["local"])

    backend.create_key_secret(made)

    keys = json.loads((run_dir / "gateway.json").read_text())["keys"]
    assert [k["id"] for k in keys] == [run_key.id, made.id]
    assert backend.read_key_record(made.id) == made
    assert gateway_stand_in.wait(timeout=30) == -signal.SIGHUP
    with pytest.raises(errors.RpcFailure, match="kubefal run"):
        backend.revoke_key(run_key.id)


def test_deploy_is_refused_naming_what_to_use_instead(tmp_path: pathlib.Path) -> None:
    run_dir, _ = _run_dir(tmp_path, 1)

    with pytest.raises(errors.RpcFailure, match="make dev") as refused:
        _backend(run_dir).refuse_deploy()

    assert refused.value.code.name == "FAILED_PRECONDITION"


def test_a_since_at_the_start_of_time_reads_the_whole_runner_log(
    tmp_path: pathlib.Path, gateway_stand_in: subprocess.Popen[bytes]
) -> None:
    # /logs/history?since=0001-01-01T00:00:00Z asks for every line; its cutoff (now minus
    # since_seconds) fell before year 1 and raised OverflowError (a 500).
    run_dir, _key = _run_dir(tmp_path, gateway_stand_in.pid)
    log = tmp_path / "runner.log"
    log.write_text("first\nsecond\n")
    runner = localrun.RunnerProcess(
        pid=gateway_stand_in.pid,
        url="http://127.0.0.1:9",
        started="2026-01-31T12:00:00+00:00",
        log=str(log),
    )
    localrun.write_json(run_dir / localrun.RUNNER, runner.to_json())
    backend = _backend(run_dir)
    since = datetime.datetime(1, 1, 1, tzinfo=datetime.UTC)
    raw = backend.read_runner_log(
        "local",
        f"app-runner-{runner.pid}",
        since_seconds=rest_logs.LogRoutes._since_seconds(since),
        tail_lines=100,
        limit_bytes=1 << 20,
    )

    assert [line.split(" ", 1)[1] for line in raw.decode().splitlines()] == ["first", "second"]


def test_log_lines_take_their_own_time_or_the_previous_lines() -> None:
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    stamper = local_logs.LogStamper(start)

    stamped = stamper.stamp(
        [
            "plain line before any time",
            '{"message": "m", "timestamp": "2026-01-01T00:00:05.5"}',
            "INFO:     uvicorn line",
        ]
    )

    assert [at for at, _ in stamped] == [
        start,
        start + datetime.timedelta(seconds=5.5),
        start + datetime.timedelta(seconds=5.5),
    ]


def test_a_runner_log_line_that_never_ends_reaches_a_follower_in_bounded_pieces(
    tmp_path: pathlib.Path, gateway_stand_in: subprocess.Popen[bytes]
) -> None:
    # The follower kept every byte of an unfinished line (the runner's output: the app's);
    # a line of 1 MiB came out whole, one of gigabytes filled the control plane's memory.
    log = tmp_path / "runner.log"
    log.write_bytes(b"")
    runner = localrun.RunnerProcess(
        pid=gateway_stand_in.pid,
        url="http://127.0.0.1:9",
        started="2026-01-31T12:00:00+00:00",
        log=str(log),
    )
    chunks = local_logs.LogTail(runner, b"").stream(64 * 1024)
    assert next(chunks) == b""  # the history
    assert next(chunks) == b""  # the file is open, at its end
    size = 1024 * 1024
    with log.open("ab") as file:
        file.write(b"x" * size + b"\n")
    pieces: list[str] = []

    def all_read() -> bool:
        text = next(chunks).decode()
        pieces.extend(line.split(" ", 1)[1] for line in text.splitlines())
        return sum(len(piece) for piece in pieces) >= size

    waiting.wait_for(all_read, timeout=60, interval=0, description="the long line")

    assert "".join(pieces) == "x" * size
    assert max(len(piece) for piece in pieces) <= runner_logs.MAX_LINE_BYTES + 64 * 1024
