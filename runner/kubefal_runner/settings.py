"""Runner configuration, from command-line flags and from the environment the operator sets.

The operator configures a runner pod through environment variables only; a developer running the
runner by hand uses the flags. A flag wins over its environment variable. This module imports only
the standard library, because it runs before the requirements install and before `fal` is imported.

Environment variables (each has the flag named in brackets):

``KUBEFAL_RUNNER_APP`` [``--app``]
    The app to serve: ``path/to/app.py::ClassName`` or ``package.module::ClassName``. Required.
``KUBEFAL_RUNNER_PORT`` [``--port``]
    Port of the app server (the SDK's ASGI app plus the ``/_kubefal/*`` endpoints). Default 8080.
``KUBEFAL_RUNNER_METRICS_PORT`` [``--metrics-port``]
    Port of the Prometheus ``/metrics`` server, as the SDK's ``serve()`` runs it. Default 9090;
    0 disables it.
``KUBEFAL_RUNNER_HOST`` [``--host``]
    Address both servers bind to. Default ``0.0.0.0``.
``KUBEFAL_MAX_MULTIPLEXING`` [``--max-multiplexing``]
    Requests (HTTP requests and WebSocket sessions) the app may hold at once; more get a 503 the
    gateway retries on another runner. Default: the app's ``max_multiplexing``, else 1 (fal's
    default).
``KUBEFAL_REQUIREMENTS`` [``--requirements``]
    pip requirements installed at start when they are not baked into the image: one per line, or a
    JSON list of strings, or a JSON list of lists (fal's layered form, installed layer by layer).
    Standard pip variables (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX``...) apply.
``KUBEFAL_REQUIREMENTS_CACHE`` [``--requirements-cache``]
    Directory holding the cached virtual environments, one per requirement set.
    Default ``$XDG_CACHE_HOME/kubefal/venvs`` (``~/.cache/kubefal/venvs``).
``KUBEFAL_DRAIN_TIMEOUT`` [``--drain-timeout``]
    Seconds the runner waits for in-flight requests after SIGTERM before it stops anyway; requests
    still running are then given up to 5 s more and answered 503 (retry elsewhere). Keep it below
    the pod's ``terminationGracePeriodSeconds`` minus those 5 s and ``teardown()``. Default 25.
``KUBEFAL_RUNNER_TLS_CERT`` / ``KUBEFAL_RUNNER_TLS_KEY`` [``--tls-cert`` / ``--tls-key``]
    PEM certificate chain and key: when both are set the app server speaks HTTPS and WSS.
``KUBEFAL_RUNNER_MAX_HEADER_BYTES`` / ``KUBEFAL_RUNNER_MAX_HEADERS`` [``--max-header-bytes`` /
``--max-headers``]
    A request whose request target and headers exceed this many bytes, or that has more header
    fields, is answered 431 with a JSON ``detail`` and its connection closed. Default 131072
    (128 KiB) and 256: twice the gateway's limits, so whatever the gateway forwards passes.
``KUBEFAL_HEALTH_CHECK`` (no flag)
    The FalApp's ``spec.healthCheck`` as JSON (``{"path": "/healthz", "method": "POST",
    "timeoutSeconds": 5, "callRegularly": true, ...}``), which the operator renders the probes
    from: it replaces the health check the app class declares. Unset: the app's own.
``KUBEFAL_GATEWAY_CA`` (no flag)
    PEM CA of the gateway's certificate. The runner writes it, after the CAs already trusted
    (``SSL_CERT_FILE``'s, else certifi's or the system's), to a bundle in the temp directory and
    points ``SSL_CERT_FILE`` (and an unset ``REQUESTS_CA_BUNDLE``) at it before the app loads,
    so fal_client in the app reaches the gateway over TLS. Unset: trust is left alone.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import json
import os
import pathlib

DEFAULT_PORT = 8080
DEFAULT_METRICS_PORT = 9090
DEFAULT_HOST = "0.0.0.0"  # a pod serves on every interface
DEFAULT_DRAIN_TIMEOUT_SECONDS = 25.0
DEFAULT_MAX_HEADER_BYTES = 128 * 1024
DEFAULT_MAX_HEADERS = 256


class SettingsError(ValueError):
    """A flag or environment variable has a value the runner cannot use."""


@dataclasses.dataclass(frozen=True)
class RunnerSettings:
    """Everything the runner needs to know before it loads the app."""

    app_ref: str
    """``file.py::Class`` or ``package.module::Class``."""
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    """0 disables the metrics server."""
    max_multiplexing: int | None = None
    """None: take the app's ``max_multiplexing`` (else 1)."""
    requirement_layers: tuple[tuple[str, ...], ...] = ()
    """pip requirements, installed layer by layer; empty when nothing is to be installed."""
    requirements_cache: pathlib.Path = dataclasses.field(
        default_factory=lambda: default_requirements_cache(os.environ)
    )
    drain_timeout_seconds: float = DEFAULT_DRAIN_TIMEOUT_SECONDS
    tls_cert: pathlib.Path | None = None
    tls_key: pathlib.Path | None = None
    health_check: dict[str, object] | None = None
    """The FalApp's health check (snake_case keys), replacing the app class's; None: the app's."""
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    """A request's target plus header names and values; larger: 431 (`http_limits`)."""
    max_headers: int = DEFAULT_MAX_HEADERS
    """A request's header fields; more: 431."""


HEALTH_CHECK_KEYS = {
    "path": "path",
    "method": "method",
    "startPeriodSeconds": "start_period_seconds",
    "timeoutSeconds": "timeout_seconds",
    "failureThreshold": "failure_threshold",
    "callRegularly": "call_regularly",
}


def parse_health_check(text: str) -> dict[str, object] | None:
    """Parse ``KUBEFAL_HEALTH_CHECK`` (the FalApp's camelCase ``healthCheck``)."""
    if not text.strip():
        return None
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as error:
        raise SettingsError(f"KUBEFAL_HEALTH_CHECK is not valid JSON: {error}") from error
    if not isinstance(decoded, dict) or not isinstance(decoded.get("path"), str):
        raise SettingsError("KUBEFAL_HEALTH_CHECK must be a JSON object with a string path")
    parsed = {
        snake: decoded[camel] for camel, snake in HEALTH_CHECK_KEYS.items() if camel in decoded
    }
    parsed.setdefault("method", "POST")
    parsed.setdefault("timeout_seconds", None)
    return parsed


def default_requirements_cache(environ: collections.abc.Mapping[str, str]) -> pathlib.Path:
    """Where cached virtual environments live when nothing else is configured."""
    cache_home = environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(cache_home) / "kubefal" / "venvs"


def parse_requirements(text: str) -> tuple[tuple[str, ...], ...]:
    """Parse ``KUBEFAL_REQUIREMENTS``: lines, a JSON list of strings, or a JSON list of lists."""
    stripped = text.strip()
    if not stripped:
        return ()
    if stripped.startswith("["):
        try:
            decoded = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise SettingsError(f"requirements are not valid JSON: {error}") from error
        if not isinstance(decoded, list):
            raise SettingsError("requirements JSON must be a list")
        if all(isinstance(item, str) for item in decoded):
            layers = [decoded]
        elif all(isinstance(item, list) for item in decoded):
            layers = decoded
        else:
            raise SettingsError(
                "requirements JSON must be a list of strings or a list of lists of strings"
            )
        parsed_layers: list[tuple[str, ...]] = []
        for layer in layers:
            if not all(isinstance(item, str) for item in layer):
                raise SettingsError("every requirement must be a string")
            cleaned = tuple(item.strip() for item in layer if item.strip())
            if cleaned:
                parsed_layers.append(cleaned)
        return tuple(parsed_layers)
    lines = tuple(
        line.strip()
        for line in stripped.splitlines()
        if line.strip() and not line.strip().startswith("#")
    )
    return (lines,) if lines else ()


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kubefal_runner",
        description="Serve an unmodified fal.App class with Kubernetes lifecycle around it.",
    )
    parser.add_argument("--app", help="file.py::Class or package.module::Class")
    parser.add_argument("--host", help=f"bind address (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, help=f"app port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--metrics-port",
        type=int,
        help=f"Prometheus port, 0 disables (default {DEFAULT_METRICS_PORT})",
    )
    parser.add_argument("--max-multiplexing", type=int, help="concurrent requests per runner")
    parser.add_argument("--requirements", help="pip requirements: lines or a JSON list")
    parser.add_argument("--requirements-cache", help="directory of cached virtual environments")
    parser.add_argument("--drain-timeout", type=float, help="seconds to drain after SIGTERM")
    parser.add_argument("--tls-cert", help="PEM certificate chain; enables HTTPS/WSS")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument(
        "--max-header-bytes",
        type=int,
        help=f"largest request head in bytes; larger: 431 (default {DEFAULT_MAX_HEADER_BYTES})",
    )
    parser.add_argument(
        "--max-headers",
        type=int,
        help=f"most header fields per request; more: 431 (default {DEFAULT_MAX_HEADERS})",
    )
    return parser


def _int_setting(
    name: str, flag_value: int | None, environ: collections.abc.Mapping[str, str]
) -> int | None:
    if flag_value is not None:
        return flag_value
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError as error:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from error


def load_settings(
    *, argv: collections.abc.Sequence[str], environ: collections.abc.Mapping[str, str]
) -> RunnerSettings:
    """Merge flags over environment variables; raise `SettingsError` on unusable values."""
    arguments = _build_parser().parse_args(list(argv))

    app_ref = arguments.app or environ.get("KUBEFAL_RUNNER_APP", "").strip()
    if not app_ref:
        raise SettingsError("no app given: pass --app file.py::Class or set KUBEFAL_RUNNER_APP")
    if "::" not in app_ref:
        raise SettingsError(f"app {app_ref!r} must look like file.py::Class or module::Class")

    port = _int_setting("KUBEFAL_RUNNER_PORT", arguments.port, environ)
    metrics_port = _int_setting("KUBEFAL_RUNNER_METRICS_PORT", arguments.metrics_port, environ)
    max_multiplexing = _int_setting("KUBEFAL_MAX_MULTIPLEXING", arguments.max_multiplexing, environ)
    if max_multiplexing is not None and max_multiplexing < 1:
        raise SettingsError(f"max multiplexing must be at least 1, got {max_multiplexing}")
    for name, value in (("port", port), ("metrics port", metrics_port)):
        if value is not None and not 0 <= value <= 65535:
            raise SettingsError(f"{name} {value} is outside 0..65535")

    requirements_text = (
        arguments.requirements
        if arguments.requirements is not None
        else environ.get("KUBEFAL_REQUIREMENTS", "")
    )
    cache_text = arguments.requirements_cache or environ.get("KUBEFAL_REQUIREMENTS_CACHE", "")

    drain_text = environ.get("KUBEFAL_DRAIN_TIMEOUT", "").strip()
    drain_timeout = arguments.drain_timeout
    if drain_timeout is None and drain_text:
        try:
            drain_timeout = float(drain_text)
        except ValueError as error:
            raise SettingsError(
                f"KUBEFAL_DRAIN_TIMEOUT must be a number of seconds, got {drain_text!r}"
            ) from error
    if drain_timeout is not None and drain_timeout < 0:
        raise SettingsError(f"drain timeout must not be negative, got {drain_timeout}")

    max_header_bytes = _int_setting(
        "KUBEFAL_RUNNER_MAX_HEADER_BYTES", arguments.max_header_bytes, environ
    )
    max_headers = _int_setting("KUBEFAL_RUNNER_MAX_HEADERS", arguments.max_headers, environ)
    for name, limit in (("max header bytes", max_header_bytes), ("max headers", max_headers)):
        if limit is not None and limit < 1:
            raise SettingsError(f"{name} must be at least 1, got {limit}")

    tls_cert_text = arguments.tls_cert or environ.get("KUBEFAL_RUNNER_TLS_CERT", "")
    tls_key_text = arguments.tls_key or environ.get("KUBEFAL_RUNNER_TLS_KEY", "")
    if bool(tls_cert_text) != bool(tls_key_text):
        raise SettingsError("TLS needs both a certificate and a key")

    return RunnerSettings(
        app_ref=app_ref,
        host=arguments.host or environ.get("KUBEFAL_RUNNER_HOST", "").strip() or DEFAULT_HOST,
        port=DEFAULT_PORT if port is None else port,
        metrics_port=DEFAULT_METRICS_PORT if metrics_port is None else metrics_port,
        max_multiplexing=max_multiplexing,
        requirement_layers=parse_requirements(requirements_text),
        requirements_cache=(
            pathlib.Path(cache_text) if cache_text else default_requirements_cache(environ)
        ),
        drain_timeout_seconds=(
            DEFAULT_DRAIN_TIMEOUT_SECONDS if drain_timeout is None else drain_timeout
        ),
        tls_cert=pathlib.Path(tls_cert_text) if tls_cert_text else None,
        tls_key=pathlib.Path(tls_key_text) if tls_key_text else None,
        health_check=parse_health_check(environ.get("KUBEFAL_HEALTH_CHECK", "")),
        max_header_bytes=DEFAULT_MAX_HEADER_BYTES if max_header_bytes is None else max_header_bytes,
        max_headers=DEFAULT_MAX_HEADERS if max_headers is None else max_headers,
    )
