"""A private CA and a server certificate for ``kubefal run``'s local gateway.

``fal_client`` only speaks ``https://`` (docs/fal-compat.md), so the local gateway must serve TLS
with a certificate the client trusts: it trusts this CA through ``SSL_CERT_FILE``. Both are cached
in the state directory and reused while valid, so an exported ``SSL_CERT_FILE`` keeps working
across restarts. The CA key never leaves the directory (mode 0600) and signs only certificates for
``127.0.0.1``, ``::1`` and ``localhost``; its name constraint (DNS name ``localhost`` only) makes
clients refuse any other host name it might sign.

The same CA serves gRPC clients (the fal CLI trusts it through
``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``). gRPC's TLS stack (BoringSSL) rejects a CA whose name
constraints contain IP address subtrees ("unsupported name constraint type"), critical or not,
so the constraint names the DNS subtree alone: host names stay confined to ``localhost``; IP
address SANs are not constrained by it. A cached CA with the older, IP-constrained form is
replaced on the next :func:`ensure`.

Files: ``ca.pem`` (the CA alone), ``ca-bundle.pem`` (the CA followed by the public roots, so the
shell that exports ``SSL_CERT_FILE`` can still reach other HTTPS sites), ``ca-key.pem``,
``server.pem``, ``server-key.pem``.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import pathlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=7)
SERVER_DNS_NAMES = ("localhost",)
SERVER_IPS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
_LOOPBACK_ONLY = x509.NameConstraints(
    permitted_subtrees=[x509.DNSName("localhost")],
    excluded_subtrees=None,
)
"""The CA can only vouch for the host name ``localhost``: even a stolen CA key cannot impersonate
another named host to a shell that trusts it through SSL_CERT_FILE. DNS only, because gRPC's TLS
stack refuses IP address name constraints (see the module docstring)."""


@dataclasses.dataclass(frozen=True)
class LocalTls:
    """Paths of the files the gateway serves and the client trusts."""

    ca_cert: pathlib.Path
    ca_bundle: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _write_private(path: pathlib.Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _still_valid(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - RENEW_BEFORE > _now() >= cert.not_valid_before_utc


def _new_ca(directory: pathlib.Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubefal local CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_LOOPBACK_ONLY, critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / "ca-key.pem", _key_pem(key))
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _load_ca(
    directory: pathlib.Path,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key(
            (directory / "ca-key.pem").read_bytes(), password=None
        )
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _still_valid(cert):
        return None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    if constraints != _LOOPBACK_ONLY:
        return None
    return cert, key


def _server_is_current(directory: pathlib.Path, ca: x509.Certificate) -> bool:
    try:
        cert = x509.load_pem_x509_certificate((directory / "server.pem").read_bytes())
        serialization.load_pem_private_key(
            (directory / "server-key.pem").read_bytes(), password=None
        )
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    covers = set(names.get_values_for_type(x509.IPAddress)) >= set(SERVER_IPS) and set(
        names.get_values_for_type(x509.DNSName)
    ) >= set(SERVER_DNS_NAMES)
    return covers and _still_valid(cert)


def _new_server(
    directory: pathlib.Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + SERVER_VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name) for name in SERVER_DNS_NAMES]
                + [x509.IPAddress(address) for address in SERVER_IPS]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(directory / "server-key.pem", _key_pem(key))
    (directory / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _public_roots() -> bytes:
    try:
        import certifi
    except ImportError:
        return b""
    return pathlib.Path(certifi.where()).read_bytes()


def ensure(directory: pathlib.Path) -> LocalTls:
    """Reuse the cached CA and server certificate, or create whichever is missing or expiring."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    loaded = _load_ca(directory)
    ca, ca_key = loaded if loaded is not None else _new_ca(directory)
    if loaded is None or not _server_is_current(directory, ca):
        _new_server(directory, ca, ca_key)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    bundle = directory / "ca-bundle.pem"
    bundle.write_bytes(ca_pem + b"\n" + _public_roots())
    return LocalTls(
        ca_cert=directory / "ca.pem",
        ca_bundle=bundle,
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
    )
