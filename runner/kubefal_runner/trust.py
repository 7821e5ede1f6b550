"""Trust the gateway's CA inside the runner, so fal_client in an app can call other apps.

The operator points ``FAL_RUN_HOST`` and ``FAL_QUEUE_RUN_HOST`` at the gateway inside the cluster
and, when the gateway's certificate comes from a private CA, hands that CA over as
``KUBEFAL_GATEWAY_CA`` (PEM text: a ConfigMap could not be mounted across namespaces). fal_client
(httpx) and requests read their trust from ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE``, and a file
given there replaces the default roots, so the bundle written here is the roots already trusted
followed by the gateway's CA: calls to public hosts keep working. Standard library only: it runs
before the requirements install, and certifi's bundle is located without importing certifi.
"""

from __future__ import annotations

import collections.abc
import importlib.util
import os
import pathlib
import ssl
import tempfile

GATEWAY_CA_VARIABLE = "KUBEFAL_GATEWAY_CA"
BUNDLE_PREFIX = "kubefal-ca-bundle-"
MAX_CA_CHARS = 256 * 1024
"""A larger ``KUBEFAL_GATEWAY_CA`` is refused: it is a configuration mistake."""


class TrustError(ValueError):
    """``KUBEFAL_GATEWAY_CA`` holds something that is not a PEM certificate bundle."""


def default_roots(environ: collections.abc.Mapping[str, str]) -> pathlib.Path | None:
    """The CA file trusted so far: ``SSL_CERT_FILE``, else certifi's bundle, else OpenSSL's."""
    configured = environ.get("SSL_CERT_FILE")
    if configured and pathlib.Path(configured).is_file():
        return pathlib.Path(configured)
    spec = importlib.util.find_spec("certifi")
    if spec is not None and spec.origin:
        bundle = pathlib.Path(spec.origin).parent / "cacert.pem"
        if bundle.is_file():
            return bundle
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and pathlib.Path(candidate).is_file():
            return pathlib.Path(candidate)
    return None


def install_gateway_ca(
    environ: collections.abc.MutableMapping[str, str] = os.environ,
    *,
    directory: pathlib.Path | None = None,
) -> pathlib.Path | None:
    """Write roots + gateway CA to a bundle and point ``SSL_CERT_FILE`` at it; return its path.

    Does nothing (returns None) when ``KUBEFAL_GATEWAY_CA`` is unset or empty.
    """
    ca = environ.get(GATEWAY_CA_VARIABLE, "").strip()
    if not ca:
        return None
    if len(ca) > MAX_CA_CHARS or "-----BEGIN CERTIFICATE-----" not in ca:
        raise TrustError(f"{GATEWAY_CA_VARIABLE} is not a PEM certificate bundle")
    roots = default_roots(environ)
    parts = [roots.read_text(errors="replace").strip()] if roots is not None else []
    parts.append(ca)
    # A name of its own (created exclusively, mode 0600): runner processes sharing a temporary
    # directory (kubefal run, the e2e pod runner) each trust their own gateway's CA, and a file
    # planted under a fixed name in a shared /tmp is never followed.
    descriptor, name = tempfile.mkstemp(prefix=BUNDLE_PREFIX, suffix=".pem", dir=directory)
    with os.fdopen(descriptor, "w") as bundle:
        bundle.write("\n".join(parts) + "\n")
    target = pathlib.Path(name)
    environ["SSL_CERT_FILE"] = str(target)
    environ.setdefault("REQUESTS_CA_BUNDLE", str(target))
    return target
