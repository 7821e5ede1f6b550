"""TLS serving options for the queue and run listeners.

fal_client hard-codes `https://` and `wss://` (docs/fal-compat.md), so the gateway serves TLS
itself with a certificate the client trusts through `SSL_CERT_FILE`. uvicorn loads the files; this
module only checks them early so a typo fails at start-up with a clear message instead of at the
first handshake.
"""

from __future__ import annotations

import pathlib
import ssl

from kubefal_gateway import settings


def uvicorn_options(config: settings.Settings) -> dict[str, object]:
    """Keyword arguments for `uvicorn.Config` (empty without TLS)."""
    if config.tls_cert is None or config.tls_key is None:
        return {}
    check_pair(config.tls_cert, config.tls_key)
    return {"ssl_certfile": str(config.tls_cert), "ssl_keyfile": str(config.tls_key)}


def check_pair(cert: pathlib.Path, key: pathlib.Path) -> None:
    """Raise SystemExit naming the problem when the certificate and key cannot be loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as error:
        raise SystemExit(f"cannot load TLS certificate {cert} with key {key}: {error}") from error
