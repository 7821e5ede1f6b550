"""Real processes for the gateway tests: runners, gateways over TLS, and the real fal_client.

Everything binds to 127.0.0.1 on ports the OS hands out; every process writes its output into the
test's temp dir (shown when a test fails) and is killed at teardown.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
from typing import Any

import httpx
import pytest
import yaml

from kubefal_api import naming
from testkit import certs, waiting
from testkit.ports import free_port

APPS_DIR = pathlib.Path(__file__).parent / "apps"
PROBE_APP = f"{APPS_DIR / 'probe_app.py'}::ProbeApp"
STARTUP_TIMEOUT = 120.0


# ---- TLS ---------------------------------------------------------------------------------------
class Tls:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.ca_path, self.cert_path, self.key_path = certs.issue_serving_certificate(
            directory, dns_names=["localhost", "queue.localhost"], ip_addresses=["127.0.0.1"]
        )


# ---- processes ---------------------------------------------------------------------------------
class Process:
    """A subprocess with its output in files; `stop` is idempotent."""

    def __init__(
        self, *, name: str, command: list[str], workdir: pathlib.Path, env: dict[str, str]
    ) -> None:
        self.name = name
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        self.popen = subprocess.Popen(
            command,
            stdout=self.stdout_path.open("ab"),
            stderr=self.stderr_path.open("ab"),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        text = ""
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                text += f"--- {path.name} ---\n" + path.read_text(errors="replace")[-4000:]
        return text

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def runner_command(app_ref: str, *, port: int, max_multiplexing: int | None = None) -> list[str]:
    """`python -m kubefal_runner` serving `app_ref` on 127.0.0.1:`port`, metrics off."""
    command = [sys.executable, "-m", "kubefal_runner", "--app", app_ref]
    command += ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0"]
    if max_multiplexing is not None:
        command += ["--max-multiplexing", str(max_multiplexing)]
    return command


class Runner(Process):
    def __init__(
        self,
        *,
        workdir: pathlib.Path,
        app_ref: str = PROBE_APP,
        env: dict[str, str] | None = None,
        max_multiplexing: int | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = runner_command(app_ref, port=self.port, max_multiplexing=max_multiplexing)
        super().__init__(
            name=f"runner-{self.port}", command=command, workdir=workdir, env=env or {}
        )

    def wait_ready(self) -> None:
        def ready() -> bool:
            if not self.alive():
                pytest.fail(f"runner exited early:\n{self.output()}")
            try:
                return httpx.get(self.url + naming.RUNNER_READY_PATH, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        waiting.wait_for(ready, timeout=STARTUP_TIMEOUT, description="runner ready", interval=0.2)


class Gateway(Process):
    def __init__(
        self,
        *,
        workdir: pathlib.Path,
        static_config: dict[str, Any],
        tls: Tls | None,
        store: str | None = None,
        extra_args: list[str] | None = None,
        name: str = "gateway",
        ports: tuple[int, int, int] | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.admin_token = admin_token
        self.queue_port, self.run_port, self.admin_port = ports or (
            free_port(),
            free_port(),
            free_port(),
        )
        self.tls = tls
        self.config_path = workdir / f"{name}-static.yaml"
        self.config_path.write_text(yaml.safe_dump(static_config))
        self.store = store or f"sqlite:///{workdir / 'queue.db'}"
        command = [
            sys.executable,
            "-m",
            "kubefal_gateway",
            "--host",
            "127.0.0.1",
            "--queue-port",
            str(self.queue_port),
            "--run-port",
            str(self.run_port),
            "--admin-port",
            str(self.admin_port),
            "--store",
            self.store,
            "--static-config",
            str(self.config_path),
            "--runner-probe-interval",
            "0.2",
            "--log-level",
            "warning",
            *(extra_args or []),
        ]
        if tls is not None:
            command += ["--tls-cert", str(tls.cert_path), "--tls-key", str(tls.key_path)]
        if admin_token is not None:
            command += ["--admin-token", admin_token]
        if os.environ.get("GATEWAY_TEST_EVENT_LOOP"):
            command += ["--event-loop", os.environ["GATEWAY_TEST_EVENT_LOOP"]]
        super().__init__(name=name, command=command, workdir=workdir, env={})

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def admin_headers(self) -> dict[str, str]:
        """The admin token's Authorization header, when the gateway has one."""
        return {"authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def queue_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.queue_port}"

    @property
    def run_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.run_port}"

    def http(self) -> httpx.Client:
        verify: Any = str(self.tls.ca_path) if self.tls is not None else False
        return httpx.Client(verify=verify, timeout=60)

    def scaling(self, app_id: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.admin_url}/_kubefal/apps/{app_id}/scaling",
            headers=self.admin_headers(),
            timeout=10,
        )
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def wait_ready(self, app_ids: collections.abc.Iterable[str] = ()) -> None:
        def ready() -> bool:
            if not self.alive():
                pytest.fail(f"gateway exited early:\n{self.output()}")
            try:
                if httpx.get(self.admin_url + "/readyz", timeout=2).status_code != 200:
                    return False
                return all(self.scaling(app_id)["readyRunners"] > 0 for app_id in app_ids)
            except httpx.HTTPError:
                return False

        waiting.wait_for(ready, timeout=STARTUP_TIMEOUT, description="gateway ready", interval=0.1)

    def client_env(self, key: str) -> dict[str, str]:
        assert self.tls is not None
        return {
            "FAL_RUN_HOST": f"127.0.0.1:{self.run_port}",
            "FAL_QUEUE_RUN_HOST": f"127.0.0.1:{self.queue_port}",
            "SSL_CERT_FILE": str(self.tls.ca_path),
            "FAL_KEY": key,
        }


async def read_http_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request with a content-length body (or none): its head and its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def gateway_on_redis(workdir: pathlib.Path, redis_url: str, app_id: str) -> tuple[Gateway, Runner]:
    """A runner serving ``app_id`` (public, no TLS) behind a gateway whose queue is the Redis at
    ``redis_url``, with a 0.5 s Redis command timeout so a stalled server shows at once."""
    runner = Runner(workdir=workdir, max_multiplexing=2)
    static = {"apps": [{"id": app_id, "auth": "public", "runners": [runner.url]}]}
    gateway = Gateway(
        workdir=workdir,
        static_config=static,
        tls=None,
        store=redis_url,
        extra_args=["--redis-timeout", "0.5"],
    )
    return gateway, runner


def run_client(script: str, *, env: dict[str, str], timeout: float = 180.0) -> Any:
    """Run `script` with the real fal_client in a fresh interpreter; it prints one JSON value
    through `emit(value)`. Returns that value."""
    return run_emitting(
        pathlib.Path(sys.executable),
        "import fal_client\n" + textwrap.dedent(script),
        env=env,
        timeout=timeout,
        drop_prefixes=("FAL_",),
        drop_names=("SSL_CERT_FILE", "SSL_CERT_DIR"),
    )


def run_emitting(
    python: pathlib.Path,
    script: str,
    *,
    env: dict[str, str],
    timeout: float,
    drop_prefixes: tuple[str, ...],
    drop_names: tuple[str, ...],
) -> Any:
    """Run `script` with `python`, in this process's environment less the variables named or
    prefixed as given, plus `env`; the script prints one JSON value through `emit(value)`.
    Returns that value (the test fails with the script's output if it printed none)."""
    prelude = textwrap.dedent(
        """
        import json, sys
        def emit(value):
            sys.stdout.write("\\n@@RESULT@@" + json.dumps(value) + "\\n")
        """
    )
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(drop_prefixes) and key not in drop_names
    }
    environment.update(env)
    completed = subprocess.run(
        [str(python), "-c", prelude + textwrap.dedent(script)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    marker = "@@RESULT@@"
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(marker):
            return json.loads(line[len(marker) :])
    pytest.fail(
        f"script failed (exit {completed.returncode}):\n{completed.stdout[-3000:]}\n"
        f"{completed.stderr[-6000:]}"
    )


@contextlib.contextmanager
def cleanup(*processes: Process) -> collections.abc.Iterator[None]:
    try:
        yield
    except BaseException:
        for process in processes:
            sys.stderr.write(process.output())
        raise
    finally:
        for process in processes:
            process.stop()
