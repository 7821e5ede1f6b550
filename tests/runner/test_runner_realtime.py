"""Realtime endpoints through the runner, driven by the real `fal_client` over TLS.

`fal_client` only speaks ``wss://`` to ``FAL_RUN_HOST`` and reads its environment at import, so the
runner serves TLS with a certificate from a throw-away CA (``--tls-cert``/``--tls-key``), and the
client runs in its own process with ``FAL_RUN_HOST``, ``FAL_KEY`` and ``SSL_CERT_FILE`` set. The
runner gets ``FAL_APP_ROOT_PATH=/test/app`` (the SDK's own root-path setting) because the client
puts the app id in the URL path, which in a cluster the gateway strips.

We test these aspects: ``fal_client.realtime(use_jwt=False)`` round-trips msgpack messages through
the SDK's realtime endpoint; invalid input surfaces as the client's ``RealtimeError``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from testkit import certs, runners

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out

CLIENT_TIMEOUT_SECONDS = 120

CLIENT_SCRIPT = """
import json
import fal_client
import fal_client.client

with fal_client.realtime("test/app", use_jwt=False) as connection:
    connection.send({"prompt": "abc"})
    first = connection.recv()
    connection.send({"prompt": "kubefal"})
    second = connection.recv()
    connection.send({"wrong": 1})
    try:
        connection.recv()
        error = None
    except fal_client.client.RealtimeError as realtime_error:
        error = str(realtime_error)
print(json.dumps({"replies": [first, second], "error": error}))
"""


def test_fal_client_realtime_round_trips_through_the_runner_over_tls(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    ca_path, cert_path, key_path = certs.issue_serving_certificate(
        tmp_path, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    runner = start_runner(
        "realtime_app.py::RealtimeApp",
        extra_args=["--tls-cert", str(cert_path), "--tls-key", str(key_path)],
        extra_env={"FAL_APP_ROOT_PATH": "/test/app"},
        tls_ca=ca_path,
    )
    runner.wait_ready()

    client = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT],
        env={
            **os.environ,
            "FAL_RUN_HOST": f"127.0.0.1:{runner.port}",
            "FAL_KEY": "key-id:key-secret",
            "SSL_CERT_FILE": str(ca_path),
        },
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_SECONDS,
        check=False,
    )

    assert client.returncode == 0, client.stderr
    outcome = json.loads(client.stdout.strip().splitlines()[-1])
    assert outcome["replies"] == [{"text": "cba"}, {"text": "lafebuk"}]
    assert outcome["error"].startswith("INTERNAL_ERROR")
    assert "validation error" in outcome["error"]
