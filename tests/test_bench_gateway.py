"""bench/gateway.py's clean-up: a bench that fails part-way stops every process it started.

The bench starts a runner and a gateway before it makes the TLS certificate for the second
gateway; a failure there (or anywhere later) must not leave the first two running.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import tempfile
from typing import Any

import pytest

from bench import gateway
from testkit import processes


class CertificateFailed(Exception):
    pass


def test_a_certificate_failure_stops_the_runner_and_gateway_already_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        process: subprocess.Popen[bytes] = real_popen(*args, **kwargs)
        started.append(process)
        return process

    def failing_make_tls(directory: pathlib.Path) -> Any:
        raise CertificateFailed(f"no certificate in {directory}")

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    monkeypatch.setattr(gateway, "make_tls", failing_make_tls)
    monkeypatch.setattr(tempfile, "mkdtemp", lambda prefix: str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["bench/gateway.py", "--requests", "1"])
    try:
        with pytest.raises(CertificateFailed):
            gateway.main()
        assert len(started) == 2, "the runner and the plain-HTTP gateway start before the cert"
        still_running = [process.args for process in started if processes.alive(process.pid)]
        assert still_running == []
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
