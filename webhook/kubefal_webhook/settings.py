"""Webhook settings: one frozen object built at start-up from flags and environment variables.

Every flag has an environment variable ``KUBEFAL_WEBHOOK_<FLAG>`` (dashes become underscores,
e.g. ``KUBEFAL_WEBHOOK_TLS_CERT``), which is what the chart sets; a flag on the command line
wins over the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Final

from kubefal_api import naming

ENV_PREFIX: Final = "KUBEFAL_WEBHOOK_"
LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the webhook process is configured with."""

    host: str = "127.0.0.1"
    """Address to listen on (the chart sets 0.0.0.0 in the pod)."""
    port: int = 8443
    """HTTPS port the API server calls."""
    tls_cert: pathlib.Path | None = None
    """PEM certificate chain for the webhook's Service name (the API server only calls https)."""
    tls_key: pathlib.Path | None = None
    """PEM private key matching tls_cert."""
    kubeconfig: pathlib.Path | None = None
    """Kubeconfig to reach the API; unset: in-cluster service account, else ~/.kube/config."""
    catalogue_namespace: str = "kubefal-system"
    """Namespace of the machine catalogue ConfigMap."""
    catalogue_name: str = naming.MACHINE_CATALOGUE_CONFIGMAP
    """Name of the machine catalogue ConfigMap (absent or invalid: the built-in defaults)."""
    cache_seconds: float = 30.0
    """How long the catalogue and the GPU node capacity are reused before being read again."""
    api_timeout_seconds: float = 3.0
    """Timeout of each call to the API server (keep well under the webhook's timeoutSeconds)."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest AdmissionReview accepted (an object and its old version, 1.5 MiB each at most)."""
    log_level: str = "info"
    """Level of the webhook's log lines and uvicorn's."""


_HELP: Final[Mapping[str, str]] = {
    "host": "address to listen on",
    "port": "HTTPS port the API server calls",
    "tls_cert": "PEM certificate chain (required: the API server only calls https)",
    "tls_key": "PEM private key of --tls-cert (required)",
    "kubeconfig": "kubeconfig file (default: in-cluster service account, else ~/.kube/config)",
    "catalogue_namespace": "namespace of the machine catalogue ConfigMap",
    "catalogue_name": "name of the machine catalogue ConfigMap",
    "cache_seconds": "seconds the catalogue and GPU node capacity are cached",
    "api_timeout_seconds": "timeout of each API server call, seconds",
    "max_body_bytes": "largest AdmissionReview body accepted",
    "log_level": "log level (debug, info, warning, error)",
}


def _env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kubefal_webhook",
        description="kubefal admission webhook: validates FalApps against the cluster's state.",
    )
    for field in dataclasses.fields(Settings):
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            default=None,
            help=f"{_HELP[field.name]} [env {_env_name(field.name)}; default {field.default!s}]",
        )
    return parser


def _convert(field: dataclasses.Field[object], raw: str) -> object:
    kind = str(field.type)
    if "pathlib.Path" in kind:
        return pathlib.Path(raw) if raw else None
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then environment variables, then defaults; SystemExit if invalid."""
    environ = os.environ if environ is None else environ
    arguments = vars(build_parser().parse_args(argv))
    values: dict[str, object] = {}
    for field in dataclasses.fields(Settings):
        raw = arguments.get(field.name)
        if raw is None:
            raw = environ.get(_env_name(field.name))
        if raw is not None:
            try:
                values[field.name] = _convert(field, raw)
            except ValueError as error:
                flag = field.name.replace("_", "-")
                raise SystemExit(f"invalid value for --{flag}: {raw!r} ({error})") from error
    loaded = Settings(**values)  # type: ignore[arg-type]
    if loaded.tls_cert is None or loaded.tls_key is None:
        raise SystemExit("--tls-cert and --tls-key are required: the API server only calls https")
    if loaded.cache_seconds < 0 or loaded.api_timeout_seconds <= 0:
        raise SystemExit("--cache-seconds must be >= 0 and --api-timeout-seconds > 0")
    if loaded.log_level not in LOG_LEVELS:
        raise SystemExit(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    return loaded
