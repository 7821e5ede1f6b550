"""Throwaway certificates for tests: a CA and serving certificates for 127.0.0.1 and DNS names.

The gateway is tested over TLS with the real ``fal_client``, the API server calls local webhook
and aggregated-API processes over TLS, and the local control plane needs its own PKI: one copy
of the certificate code for ``tests/``, ``e2e/`` and ``bench/``.
"""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.TraditionalOpenSSL,
        encryption_algorithm=serialization.NoEncryption(),
    )


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def subject_name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def certificate(
    *,
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    usage: x509.ObjectIdentifier | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name = issuer[0].subject if issuer else subject
    signing_key = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
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
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def issue_serving_certificate(
    directory: pathlib.Path, *, dns_names: Sequence[str], ip_addresses: Sequence[str] = ()
) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A throwaway CA and a server certificate for it; returns (ca.crt, tls.crt, tls.key).

    Used by tests that make the API server call a local process over TLS (aggregated APIs,
    admission webhooks): the API server checks the name ``<service>.<namespace>.svc``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = new_key()
    ca = certificate(subject=subject_name("kubefal-test-ca"), key=ca_key, issuer=None)
    key = new_key()
    cert = certificate(
        subject=subject_name(dns_names[0][:64]),
        key=key,
        issuer=(ca, ca_key),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )
    paths = (directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    for path, content in zip(paths, (pem_cert(ca), pem_cert(cert), pem_key(key)), strict=True):
        path.write_bytes(content)
    return paths
