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

import datetime
import ipaddress
import json
import os
import pathlib
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubefal_runner import testing

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


def _write_tls_files(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it; returns (ca, cert, key) paths."""
    now = datetime.datetime.now(tz=datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubefal test CA")])
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server-key.pem"
    ca_path.write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server_certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        server_key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def test_fal_client_realtime_round_trips_through_the_runner_over_tls(
    start_runner: testing.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    ca_path, cert_path, key_path = _write_tls_files(tmp_path)
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
