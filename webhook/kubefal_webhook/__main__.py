"""``python -m kubefal_webhook``: serve the admission webhook over HTTPS with uvicorn.

The API server calls admission webhooks over https only, so a certificate is required
(``--tls-cert``/``--tls-key``, issued for the webhook Service's DNS name); it is loaded once
here so a wrong path or a key that does not match fails at start with a clear message.
With ``--metrics-port``, Prometheus metrics are served on a plain-HTTP listener of their own.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

import uvicorn

from kubefal_webhook import app, metrics, settings


def _check_tls_pair(config: settings.Settings) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile=str(config.tls_cert), keyfile=str(config.tls_key))
    except (OSError, ssl.SSLError) as error:
        raise SystemExit(
            f"cannot load TLS certificate {config.tls_cert} with key {config.tls_key}: {error}"
        ) from error


def main(argv: Sequence[str] | None = None) -> None:
    config = settings.load(argv)
    _check_tls_pair(config)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    instruments = metrics.Metrics()
    metrics_server = None
    if config.metrics_port:
        try:
            metrics_server = instruments.serve(host=config.metrics_host, port=config.metrics_port)
        except OSError as error:
            raise SystemExit(
                f"cannot serve /metrics on {config.metrics_host}:{config.metrics_port}: {error}"
            ) from error
    try:
        _serve(config, instruments)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()


def _serve(config: settings.Settings, instruments: metrics.Metrics) -> None:
    uvicorn.run(
        app.create_app(config, instruments=instruments),
        host=config.host,
        port=config.port,
        ssl_certfile=str(config.tls_cert),
        ssl_keyfile=str(config.tls_key),
        log_level=config.log_level,
        lifespan="on",
        access_log=False,
    )


if __name__ == "__main__":
    main()
