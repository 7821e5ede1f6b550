"""Run real runner processes from tests: ``python -m kubefal_runner`` on a free loopback port.

The runner's own tests need a subprocess with its output kept in files and probes of
``/_kubefal/*`` that tolerate a port that is not open yet. Test-only code, so it lives here and
not in the runner package (which ships in every runner image).
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

from kubefal_api import naming
from testkit import ports, waiting

DEFAULT_STARTUP_TIMEOUT_SECONDS = 90.0
DEFAULT_EXIT_TIMEOUT_SECONDS = 60.0
PROBE_TIMEOUT_SECONDS = 10.0


def runner_command(app_ref: str, *, port: int, max_multiplexing: int | None = None) -> list[str]:
    """`python -m kubefal_runner` serving `app_ref` on 127.0.0.1:`port`, metrics off (the
    benches' runners)."""
    command = [sys.executable, "-m", "kubefal_runner", "--app", app_ref]
    command += ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0"]
    if max_multiplexing is not None:
        command += ["--max-multiplexing", str(max_multiplexing)]
    return command


class RunnerExited(waiting.GiveUp):
    """The runner process ended while it was expected to serve."""


@dataclasses.dataclass(frozen=True)
class ProbeResponse:
    """Status, headers and body of one GET on the runner."""

    status_code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RunnerProcess:
    """One ``python -m kubefal_runner`` subprocess and the addresses it serves."""

    def __init__(
        self,
        *,
        app_ref: str,
        workdir: pathlib.Path,
        host: str = "127.0.0.1",
        extra_args: collections.abc.Sequence[str] = (),
        extra_env: collections.abc.Mapping[str, str] | None = None,
        tls_ca: pathlib.Path | None = None,
    ) -> None:
        self.host = host
        self.port = ports.free_port(host)
        self.metrics_port = ports.free_port(host)
        self.base_url = f"{'https' if tls_ca else 'http'}://{host}:{self.port}"
        self._ssl_context = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else None
        self.stdout_path = workdir / f"runner-{self.port}.stdout"
        self.stderr_path = workdir / f"runner-{self.port}.stderr"
        command = [
            sys.executable,
            "-m",
            "kubefal_runner",
            "--app",
            app_ref,
            "--host",
            host,
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            *extra_args,
        ]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=environment)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return self.stdout() + self.stderr()

    def get(self, path: str) -> ProbeResponse | None:
        """GET ``path`` on the runner; None while nothing answers on the port."""
        request = urllib.request.Request(self.base_url + path, method="GET")
        try:
            with urllib.request.urlopen(
                request, timeout=PROBE_TIMEOUT_SECONDS, context=self._ssl_context
            ) as response:
                return ProbeResponse(
                    status_code=response.status,
                    headers=dict(response.headers.items()),
                    body=response.read(),
                )
        except urllib.error.HTTPError as error:
            return ProbeResponse(
                status_code=error.code, headers=dict(error.headers.items()), body=error.read()
            )
        except (urllib.error.URLError, OSError):
            return None

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.output()[-6000:]
            raise RunnerExited(f"runner exited with {self.process.returncode}:\n{tail}")

    def wait_listening(self, timeout: float = DEFAULT_STARTUP_TIMEOUT_SECONDS) -> None:
        """Wait until the port answers (``setup()`` may still be running)."""

        def listening() -> bool:
            self._check_alive()
            return self.get(naming.RUNNER_READY_PATH) is not None

        waiting.wait_for(listening, timeout=timeout, interval=0.05, description="the runner's port")

    def wait_ready(self, timeout: float = DEFAULT_STARTUP_TIMEOUT_SECONDS) -> None:
        """Wait until ``/_kubefal/ready`` answers 200."""

        def ready() -> bool:
            self._check_alive()
            response = self.get(naming.RUNNER_READY_PATH)
            return response is not None and response.status_code == 200

        waiting.wait_for(
            ready, timeout=timeout, interval=0.05, description="the runner to be ready"
        )

    def wait_exit(self, timeout: float = DEFAULT_EXIT_TIMEOUT_SECONDS) -> int:
        """Wait for the process to end; return its exit code."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise TimeoutError(f"runner did not exit within {timeout} s") from error

    def send_signal(self, signal_number: int = signal.SIGTERM) -> None:
        self.process.send_signal(signal_number)

    def kill(self) -> None:
        """Kill the process if it still runs (always safe to call)."""
        if self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)


RunnerFactory = collections.abc.Callable[..., RunnerProcess]
"""What a test fixture that starts runners hands to the test."""
