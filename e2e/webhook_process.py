"""``python -m kubefal_webhook`` as a real process on loopback, for the e2e tests that need it.

e2e/test_webhook.py registers it with the API server; e2e/test_monitoring.py reads the metric
names its ``/metrics`` serves. It listens over TLS with a throwaway CA on a free port, serves
its Prometheus metrics on a second free port (plain HTTP), and reads its machine catalogue
from the namespace it is given, so a test can install its own catalogue.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from e2e import cluster as local_cluster
from testkit import certs, processes, waiting


@dataclasses.dataclass(frozen=True)
class RunningWebhook:
    port: int
    """The HTTPS port (``/validate``, ``/healthz``, ``/readyz``)."""
    ca: pathlib.Path
    """The CA that issued its serving certificate (for 127.0.0.1 and localhost)."""
    metrics_port: int
    """The plain-HTTP port of ``/metrics``."""
    log: pathlib.Path

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@contextmanager
def running_webhook(
    kubeconfig: pathlib.Path, *, workdir: pathlib.Path, catalogue_namespace: str
) -> Iterator[RunningWebhook]:
    """The webhook, ready (its ``/readyz`` answers 200); terminated on exit."""
    ca, cert, key = certs.issue_serving_certificate(
        workdir / "tls", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    port = local_cluster.free_port()
    metrics_port = local_cluster.free_port()
    log_path = workdir / "webhook.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubefal_webhook",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--tls-cert={cert}",
                f"--tls-key={key}",
                f"--kubeconfig={kubeconfig}",
                f"--catalogue-namespace={catalogue_namespace}",
                "--cache-seconds=2",
                "--metrics-host=127.0.0.1",
                f"--metrics-port={metrics_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    running = RunningWebhook(port=port, ca=ca, metrics_port=metrics_port, log=log_path)
    try:
        tls = running.tls()

        def ready_or_exited() -> bool:
            if process.poll() is not None:
                return True
            try:
                reply = httpx.get(f"https://127.0.0.1:{port}/readyz", verify=tls, timeout=5)
            except httpx.TransportError:
                return False
            return reply.status_code == 200

        waiting.wait_for(ready_or_exited, timeout=60, description="the webhook's /readyz")
        assert process.poll() is None, f"the webhook exited:\n{log_path.read_text()}"
        yield running
    finally:
        processes.stop(process)
