"""Processes the chaos suite kills, stalls and restarts: runners on fixed ports, redis-server.

`gwharness` (tests/gateway) already runs gateways and one-shot runners; the chaos suite also
needs a runner that comes back on the same port after it crashed (what the kubelet does for a
pod's container) and a redis-server (``testkit.redis``, append-only, fsynced) that survives kill -9.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import threading

import httpx

from e2e.chaos import CHAOS_APP, wait_until
from tests.gateway import gwharness


class SupervisedRunner:
    """A runner on a fixed port, restarted whenever it exits, like a container under a kubelet."""

    def __init__(
        self, workdir: pathlib.Path, *, exec_dir: pathlib.Path, max_multiplexing: int
    ) -> None:
        self.port = gwharness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.exec_dir = exec_dir
        self.max_multiplexing = max_multiplexing
        self.restarts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)

    def _spawn(self) -> None:
        log = (self.workdir / f"runner-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            gwharness.runner_command(
                CHAOS_APP, port=self.port, max_multiplexing=self.max_multiplexing
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "CHAOS_EXEC_DIR": str(self.exec_dir)},
            start_new_session=True,
        )

    def start(self) -> SupervisedRunner:
        self._spawn()
        self._supervisor.start()
        return self

    def _supervise(self) -> None:
        while not self._stopping.wait(0.1):
            process = self.process
            if process is not None and process.poll() is not None and not self._stopping.is_set():
                self.restarts += 1
                self._spawn()

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/_kubefal/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self) -> None:
        wait_until(self.ready, timeout=120, what=f"runner {self.url} ready")

    def kill(self) -> None:
        """SIGKILL; the supervisor starts it again."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor.is_alive():
            self._supervisor.join()
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
