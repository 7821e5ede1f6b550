"""Webhook settings: one frozen object built at start-up from flags and environment variables.

Every field is a flag (``--tls-cert``) and an environment variable ``KUBEFAL_WEBHOOK_<FIELD>``
(``KUBEFAL_WEBHOOK_TLS_CERT``, what the chart sets); a flag wins over the environment. The
loader, the help text and the error messages are the shared ones of
``kubefal_api.process_settings``.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Mapping, Sequence
from typing import ClassVar, Final, Literal

from pydantic import Field

from kubefal_api import naming
from kubefal_api.process_settings import ProcessSettings

ENV_PREFIX: Final = "KUBEFAL_WEBHOOK_"
LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(ProcessSettings):
    """Everything the webhook process is configured with."""

    env_prefix: ClassVar[str] = ENV_PREFIX

    host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0 in the pod).")
    port: int = Field(default=8443, ge=0, le=65535, description="HTTPS port the API server calls.")
    tls_cert: pathlib.Path | None = Field(
        default=None,
        description="PEM certificate chain for the webhook's Service name (required: the API "
        "server only calls https).",
    )
    tls_key: pathlib.Path | None = Field(
        default=None, description="PEM private key matching --tls-cert (required)."
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address of the plain-HTTP Prometheus /metrics listener (0.0.0.0 in the pod).",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the plain-HTTP Prometheus /metrics listener; 0: no listener (the "
        "chart sets webhook.metricsPort, 9090).",
    )
    kubeconfig: pathlib.Path | None = Field(
        default=None,
        description="Kubeconfig to reach the API; unset: in-cluster service account, else "
        "~/.kube/config.",
    )
    catalogue_namespace: str = Field(
        default="kubefal-system", description="Namespace of the machine catalogue ConfigMap."
    )
    catalogue_name: str = Field(
        default=naming.MACHINE_CATALOGUE_CONFIGMAP,
        description="Name of the machine catalogue ConfigMap (absent or invalid: the built-in "
        "defaults).",
    )
    cache_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Seconds the catalogue and the GPU node capacity are reused before being "
        "read again.",
    )
    api_timeout_seconds: float = Field(
        default=3.0,
        gt=0,
        description="Timeout of each call to the API server, in seconds (keep well under the "
        "webhook's timeoutSeconds).",
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1,
        description="Largest AdmissionReview accepted (an object and its old version, 1.5 MiB "
        "each at most).",
    )
    log_level: LogLevel = Field(
        default="info", description="Level of the webhook's log lines and uvicorn's."
    )


def build_parser() -> argparse.ArgumentParser:
    return Settings.build_parser(
        prog="python -m kubefal_webhook",
        description="kubefal admission webhook: validates FalApps against the cluster's state.",
    )


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then environment variables, then defaults; SystemExit if invalid."""
    loaded = Settings.load(argv, environ, parser=build_parser())
    if loaded.tls_cert is None or loaded.tls_key is None:
        raise SystemExit("--tls-cert and --tls-key are required: the API server only calls https")
    return loaded
