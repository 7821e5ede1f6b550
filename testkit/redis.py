"""A real redis-server on 127.0.0.1 for tests, the chaos suite and the benchmarks.

The Redis queue backend is only ever tested against a real server: one class starts it
(optionally with an append-only file fsynced on every write, so ``kill -9`` loses nothing
acknowledged), restarts it on the same port, stalls it with SIGSTOP, and stops it.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator

from testkit import ports, processes, waiting

STARTUP_TIMEOUT = 30.0
START_ATTEMPTS = 5


class RedisUnavailable(RuntimeError):
    """redis-server is not installed or did not start; the message says what to do."""


def redis_server_binary() -> str:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not pathlib.Path(binary).exists():
        raise RedisUnavailable(
            f"redis-server not found at {binary}: apt-get install -y redis-server"
        )
    return binary


class RedisServer:
    """One redis-server child process; ``start`` again after ``stop``/``kill`` reuses the port."""

    def __init__(
        self,
        workdir: pathlib.Path,
        *,
        durable: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.durable = durable
        self.extra_args = extra_args
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port: int | None = None) -> RedisServer:
        """Start on ``port``, else on the port of an earlier start, else on a free one (retried
        if another process takes it first)."""
        binary = redis_server_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        fixed = port or self.port
        for _attempt in range(1 if fixed else START_ATTEMPTS):
            self.port = fixed or ports.free_port()
            persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else []
            command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            command += persistence or ["--appendonly", "no"]
            command += ["--dir", str(self.workdir), *self.extra_args]
            with (self.workdir / "redis.log").open("ab") as log:
                self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            if self._wait_ready():
                return self
            self.stop()
        raise RedisUnavailable(
            f"redis-server did not start on 127.0.0.1:{self.port}; see {self.workdir}/redis.log"
        )

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _wait_ready(self) -> bool:
        process = self.process
        assert process is not None
        try:
            waiting.wait_for(
                lambda: process.poll() is not None or self._answers(),
                timeout=STARTUP_TIMEOUT,
                interval=0.05,
                description=f"redis-server on port {self.port}",
            )
        except waiting.ConditionTimeout:
            return False
        return process.poll() is None

    def stall(self) -> None:
        """SIGSTOP: the server holds its connections open and answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        """The server stalled (`stall`) for the ``with`` block and resumed however it ends."""
        self.stall()
        try:
            yield
        finally:
            self.resume()

    def kill(self) -> None:
        """kill -9; with ``durable`` nothing acknowledged is lost."""
        process, self.process = self.process, None
        if process is not None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGCONT)
        processes.stop(process, timeout=10)
