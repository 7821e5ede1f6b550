"""The local CA that `kubefal run` makes must satisfy gRPC's TLS stack as well as HTTP/1.1's.

gRPC (BoringSSL) refused the CA while its name constraints held IP address subtrees
("unsupported name constraint type"), so the fal CLI could not reach a local control plane.
These tests make a real gRPC handshake with the real certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubefal_cli import localca


@pytest.fixture
def echo_server(tmp_path: pathlib.Path) -> Iterator[tuple[localca.LocalTls, int]]:
    tls = localca.ensure(tmp_path / "ca")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "probe.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)},
    )
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(tls.server_key.read_bytes(), tls.server_cert.read_bytes())]
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield tls, port
    server.stop(grace=None)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_a_grpc_client_trusting_the_local_ca_completes_a_call(
    echo_server: tuple[localca.LocalTls, int], host: str
) -> None:
    tls, port = echo_server
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca_bundle.read_bytes())

    with grpc.secure_channel(f"{host}:{port}", credentials) as channel:
        reply = channel.unary_unary("/probe.Echo/Echo")(b"ping", timeout=10)

    assert reply == b"ping"


def test_a_ca_cached_with_ip_name_constraints_is_replaced(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "ca"
    directory.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubefal local CA")])
    now = datetime.datetime.now(tz=datetime.UTC)
    old_constraints = x509.NameConstraints(
        permitted_subtrees=[
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
        ],
        excluded_subtrees=None,
    )
    old_ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(old_constraints, critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(old_ca.public_bytes(serialization.Encoding.PEM))
    (directory / "ca-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    tls = localca.ensure(directory)

    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    assert ca.serial_number != old_ca.serial_number
    assert constraints.permitted_subtrees == [x509.DNSName("localhost")]
