"""The control plane's settings: command-line flags, each with an environment variable.

Every limit the server applies (worker threads, message size, list sizes, Kubernetes and
gateway timeouts) has a default here and a flag, so an operator can see and change it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from collections.abc import Sequence

DEFAULT_PORT = 50051
DEFAULT_KEY_NAMESPACE = "kubefal-system"
DEFAULT_MAX_WORKERS = 8
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_KUBE_TIMEOUT_SECONDS = 10.0
DEFAULT_GATEWAY_TIMEOUT_SECONDS = 2.0
DEFAULT_AUTH_CACHE_SECONDS = 60.0
DEFAULT_MAX_LIST_ITEMS = 5000
DEFAULT_DEPLOY_TIMEOUT_SECONDS = 900.0
DEFAULT_MAX_DEPLOYS = 2
DEFAULT_REST_MAX_CONNECTIONS = 256
DEFAULT_REST_MAX_HEADER_BYTES = 32 * 1024
DEFAULT_REST_HEADER_TIMEOUT_SECONDS = 10.0
DEFAULT_REST_MAX_BODY_BYTES = 1024 * 1024 * 1024
DEFAULT_LOG_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_LOG_MAX_LINES = 50_000
DEFAULT_LOG_STREAMS = 32
DEFAULT_LOG_STREAM_SECONDS = 3600.0


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything :class:`kubefal_controlplane.server.ControlPlane` needs to start."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = DEFAULT_PORT
    """Port to listen on (0: any free port; :attr:`ControlPlane.port` tells which)."""
    tls_cert: pathlib.Path | None = None
    """PEM server certificate (with its chain); required unless ``local_credentials``."""
    tls_key: pathlib.Path | None = None
    """PEM private key of ``tls_cert``."""
    local_credentials: bool = False
    """Serve gRPC local credentials instead of TLS (clients with ``ISOLATE_TEST_MODE=1``)."""
    kubeconfig: pathlib.Path | None = None
    """Kubeconfig file; unset means the pod's in-cluster ServiceAccount."""
    local_run: pathlib.Path | None = None
    """Run directory of a ``kubefal run``: serve its one app (no Kubernetes), see
    :mod:`kubefal_controlplane.local`; ``kubefal run`` sets it."""
    context: str | None = None
    """Kubeconfig context (default: the current one)."""
    key_namespace: str = DEFAULT_KEY_NAMESPACE
    """Namespace of the API-key Secrets (the same the gateway and ``kubefal keys`` use)."""
    gateway_admin_url: str | None = None
    """The gateway's admin listener, for each runner's in-flight requests and idle time."""
    gateway_admin_token: str | None = None
    """Bearer token of that listener (the gateway's ``--admin-token``); unset: none sent."""
    max_workers: int = DEFAULT_MAX_WORKERS
    """Calls served at once; further calls wait in gRPC's queue."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest request and response message, in bytes."""
    kube_timeout: float = DEFAULT_KUBE_TIMEOUT_SECONDS
    """Seconds one Kubernetes API request may take."""
    gateway_timeout: float = DEFAULT_GATEWAY_TIMEOUT_SECONDS
    """Seconds one request to the gateway's admin listener may take."""
    auth_cache_seconds: float = DEFAULT_AUTH_CACHE_SECONDS
    """How long a verified key's hash check is remembered (revocation is read on every call)."""
    max_list_items: int = DEFAULT_MAX_LIST_ITEMS
    """Most objects one list call reads from the Kubernetes API (apps, pods, keys)."""
    public_run_url: str | None = None
    """Base URL of the gateway's run listener as clients reach it (``fal deploy`` prints
    ``<it>/<namespace>/<app>``); unset: the FalApp's status.endpoints.run."""
    public_queue_url: str | None = None
    """Base URL of the gateway's queue listener as clients reach it."""
    deploy_timeout: float = DEFAULT_DEPLOY_TIMEOUT_SECONDS
    """Longest a ``fal deploy`` waits for its runners to be ready."""
    max_deploys: int = DEFAULT_MAX_DEPLOYS
    """``fal deploy`` calls served at once; each holds a worker thread until its runners are
    ready (up to ``deploy_timeout``), so more are refused with ``RESOURCE_EXHAUSTED`` rather than
    left to take every worker; at most ``max_workers - 1`` are used, so other calls keep one."""

    @property
    def deploy_slots(self) -> int:
        """``fal deploy`` calls served at once: ``max_deploys``, below ``max_workers``."""
        return max(1, min(self.max_deploys, self.max_workers - 1))

    gateway_rest_url: str | None = None
    """The gateway's REST listener (``https://host:port``) as the control plane reaches it:
    ``/files/*`` on the control plane's port is relayed there, and ``fal deploy`` reads the
    app_files it stored; unset: those paths answer 503."""
    gateway_rest_ca: pathlib.Path | None = None
    """PEM bundle that verifies the gateway REST listener's certificate; the system CAs when
    unset or when the file does not exist."""
    rest_max_connections: int = DEFAULT_REST_MAX_CONNECTIONS
    """Connections the TLS front door holds open at once (gRPC and REST together)."""
    rest_max_header_bytes: int = DEFAULT_REST_MAX_HEADER_BYTES
    """Largest REST request line plus headers (431 beyond)."""
    rest_header_timeout: float = DEFAULT_REST_HEADER_TIMEOUT_SECONDS
    """Seconds for the TLS handshake, for a REST request's head, and between body chunks."""
    rest_max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES
    """Largest REST request body relayed to the gateway (413 beyond)."""
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    """Most bytes of a runner's log one ``/logs/history`` page reads from Kubernetes."""
    log_max_lines: int = DEFAULT_LOG_MAX_LINES
    """Most (newest) lines of a runner's log one ``/logs/history`` page looks at."""
    log_streams: int = DEFAULT_LOG_STREAMS
    """``/logs/stream`` (``fal runners logs --follow``) connections served at once (429 beyond)."""
    log_stream_seconds: float = DEFAULT_LOG_STREAM_SECONDS
    """Longest one ``/logs/stream`` lasts; the CLI's user runs it again to go on."""

    def __post_init__(self) -> None:
        if not self.local_credentials and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key are required (or --local-credentials)")
        if not 1 <= self.max_workers <= 256:
            raise ValueError("--max-workers must be 1-256")
        if not 1 <= self.max_deploys <= 256:
            raise ValueError("--max-deploys must be 1-256")
        if not 1024 <= self.max_message_bytes <= 512 * 1024 * 1024:
            raise ValueError("--max-message-bytes must be 1 KiB - 512 MiB")
        if not 1 <= self.max_list_items <= 100_000:
            raise ValueError("--max-list-items must be 1-100000")
        if not 1 <= self.rest_max_connections <= 100_000:
            raise ValueError("--rest-max-connections must be 1-100000")
        if not 1024 <= self.rest_max_header_bytes <= 1024 * 1024:
            raise ValueError("--rest-max-header-bytes must be 1 KiB - 1 MiB")
        if not 0 < self.rest_header_timeout <= 600:
            raise ValueError("--rest-header-timeout must be in (0, 600] seconds")
        if not 0 <= self.rest_max_body_bytes <= 64 * 1024**3:
            raise ValueError("--rest-max-body-bytes must be 0 - 64 GiB")
        if not 1024 <= self.log_max_bytes <= 1024**3:
            raise ValueError("--log-max-bytes must be 1 KiB - 1 GiB")
        if not 1 <= self.log_max_lines <= 10_000_000:
            raise ValueError("--log-max-lines must be 1-10000000")
        if not 0 <= self.log_streams <= 10_000:
            raise ValueError("--log-streams must be 0-10000")
        if not 0 < self.log_stream_seconds <= 86_400:
            raise ValueError("--log-stream-seconds must be in (0, 86400]")
        if self.gateway_rest_url is not None and not self.gateway_rest_url.startswith(
            ("https://", "http://")
        ):
            raise ValueError("--gateway-rest-url must be an http(s):// URL")


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m kubefal_controlplane``."""
    p = argparse.ArgumentParser(
        prog="python -m kubefal_controlplane",
        description=(
            "Serve fal's IsolateController gRPC API (the `fal` CLI and SyncServerlessClient, "
            "via FAL_GRPC_HOST) from FalApps, runner pods, API-key Secrets and Secrets. "
            "Every flag also reads the environment variable named in its help."
        ),
    )
    p.add_argument(
        "--host",
        default=_env("KUBEFAL_CONTROLPLANE_HOST") or "127.0.0.1",
        help="address to listen on (KUBEFAL_CONTROLPLANE_HOST; default 127.0.0.1)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(_env("KUBEFAL_CONTROLPLANE_PORT") or DEFAULT_PORT),
        help=f"port (KUBEFAL_CONTROLPLANE_PORT; default {DEFAULT_PORT}; 0: any)",
    )
    p.add_argument(
        "--tls-cert",
        type=pathlib.Path,
        default=_env("KUBEFAL_CONTROLPLANE_TLS_CERT"),
        help="PEM server certificate (KUBEFAL_CONTROLPLANE_TLS_CERT)",
    )
    p.add_argument(
        "--tls-key",
        type=pathlib.Path,
        default=_env("KUBEFAL_CONTROLPLANE_TLS_KEY"),
        help="PEM private key (KUBEFAL_CONTROLPLANE_TLS_KEY)",
    )
    p.add_argument(
        "--local-credentials",
        action="store_true",
        default=_env("KUBEFAL_CONTROLPLANE_LOCAL_CREDENTIALS") == "1",
        help="gRPC local credentials instead of TLS, for ISOLATE_TEST_MODE=1 clients "
        "on this host (KUBEFAL_CONTROLPLANE_LOCAL_CREDENTIALS=1)",
    )
    p.add_argument(
        "--kubeconfig",
        type=pathlib.Path,
        default=_env("KUBECONFIG"),
        help="kubeconfig file (KUBECONFIG; default: in-cluster ServiceAccount)",
    )
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument(
        "--local-run",
        type=pathlib.Path,
        default=_env("KUBEFAL_CONTROLPLANE_LOCAL_RUN"),
        help="serve the one app of this `kubefal run` run directory instead of a cluster "
        "(KUBEFAL_CONTROLPLANE_LOCAL_RUN; kubefal run passes it)",
    )
    p.add_argument(
        "--key-namespace",
        default=_env("KUBEFAL_KEY_NAMESPACE") or DEFAULT_KEY_NAMESPACE,
        help="namespace of the API-key Secrets (KUBEFAL_KEY_NAMESPACE; default "
        f"{DEFAULT_KEY_NAMESPACE})",
    )
    p.add_argument(
        "--gateway-admin-url",
        default=_env("KUBEFAL_GATEWAY_ADMIN_URL"),
        help="the gateway's admin listener, e.g. http://127.0.0.1:9090, for runners' "
        "in-flight requests and idle time (KUBEFAL_GATEWAY_ADMIN_URL; default: none)",
    )
    p.add_argument(
        "--gateway-admin-token",
        default=_env("KUBEFAL_GATEWAY_ADMIN_TOKEN"),
        help="bearer token of the gateway's admin listener, when it requires one "
        "(KUBEFAL_GATEWAY_ADMIN_TOKEN; default: none)",
    )
    p.add_argument(
        "--max-workers",
        type=int,
        default=DEFAULT_MAX_WORKERS,
        help=f"calls served at once (default {DEFAULT_MAX_WORKERS})",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help=f"largest message in bytes (default {DEFAULT_MAX_MESSAGE_BYTES})",
    )
    p.add_argument(
        "--kube-timeout",
        type=float,
        default=DEFAULT_KUBE_TIMEOUT_SECONDS,
        help=f"seconds per Kubernetes request (default {DEFAULT_KUBE_TIMEOUT_SECONDS})",
    )
    p.add_argument(
        "--gateway-timeout",
        type=float,
        default=DEFAULT_GATEWAY_TIMEOUT_SECONDS,
        help=f"seconds per gateway admin request (default {DEFAULT_GATEWAY_TIMEOUT_SECONDS})",
    )
    p.add_argument(
        "--auth-cache-seconds",
        type=float,
        default=DEFAULT_AUTH_CACHE_SECONDS,
        help=f"seconds a verified key hash is remembered (default {DEFAULT_AUTH_CACHE_SECONDS})",
    )
    p.add_argument(
        "--public-run-url",
        default=_env("KUBEFAL_PUBLIC_RUN_URL"),
        help="the gateway's run URL as clients reach it, e.g. https://run.example "
        "(KUBEFAL_PUBLIC_RUN_URL; default: each FalApp's status.endpoints)",
    )
    p.add_argument(
        "--public-queue-url",
        default=_env("KUBEFAL_PUBLIC_QUEUE_URL"),
        help="the gateway's queue URL as clients reach it (KUBEFAL_PUBLIC_QUEUE_URL)",
    )
    p.add_argument(
        "--deploy-timeout",
        type=float,
        default=DEFAULT_DEPLOY_TIMEOUT_SECONDS,
        help="seconds a fal deploy waits for its runners to be ready "
        f"(default {DEFAULT_DEPLOY_TIMEOUT_SECONDS})",
    )
    p.add_argument(
        "--max-deploys",
        type=int,
        default=DEFAULT_MAX_DEPLOYS,
        help="fal deploy calls served at once, each holding a worker until its runners are "
        f"ready; more get RESOURCE_EXHAUSTED (default {DEFAULT_MAX_DEPLOYS}; at most "
        "--max-workers minus 1 are used)",
    )
    p.add_argument(
        "--gateway-rest-url",
        default=_env("KUBEFAL_GATEWAY_REST_URL"),
        help="the gateway's REST listener, e.g. https://kubefal-gateway:8445, where /files/* "
        "and fal deploy's app_files go (KUBEFAL_GATEWAY_REST_URL; default: none, 503)",
    )
    p.add_argument(
        "--gateway-rest-ca",
        type=pathlib.Path,
        default=_env("KUBEFAL_GATEWAY_REST_CA"),
        help="PEM CA bundle for the gateway REST listener (KUBEFAL_GATEWAY_REST_CA; "
        "default: system CAs)",
    )
    p.add_argument(
        "--rest-max-connections",
        type=int,
        default=DEFAULT_REST_MAX_CONNECTIONS,
        help="connections open at once on the TLS port, gRPC and REST "
        f"(default {DEFAULT_REST_MAX_CONNECTIONS})",
    )
    p.add_argument(
        "--rest-max-header-bytes",
        type=int,
        default=DEFAULT_REST_MAX_HEADER_BYTES,
        help=f"largest REST request head (default {DEFAULT_REST_MAX_HEADER_BYTES})",
    )
    p.add_argument(
        "--rest-header-timeout",
        type=float,
        default=DEFAULT_REST_HEADER_TIMEOUT_SECONDS,
        help="seconds for a TLS handshake, a REST request head, and between body chunks "
        f"(default {DEFAULT_REST_HEADER_TIMEOUT_SECONDS})",
    )
    p.add_argument(
        "--rest-max-body-bytes",
        type=int,
        default=DEFAULT_REST_MAX_BODY_BYTES,
        help=f"largest REST body relayed to the gateway (default {DEFAULT_REST_MAX_BODY_BYTES})",
    )
    p.add_argument(
        "--log-max-bytes",
        type=int,
        default=DEFAULT_LOG_MAX_BYTES,
        help=f"bytes of runner log one history page reads (default {DEFAULT_LOG_MAX_BYTES})",
    )
    p.add_argument(
        "--log-max-lines",
        type=int,
        default=DEFAULT_LOG_MAX_LINES,
        help=f"newest log lines one history page looks at (default {DEFAULT_LOG_MAX_LINES})",
    )
    p.add_argument(
        "--log-streams",
        type=int,
        default=DEFAULT_LOG_STREAMS,
        help=f"log streams (runners logs --follow) at once (default {DEFAULT_LOG_STREAMS})",
    )
    p.add_argument(
        "--log-stream-seconds",
        type=float,
        default=DEFAULT_LOG_STREAM_SECONDS,
        help=f"longest one log stream lasts (default {DEFAULT_LOG_STREAM_SECONDS})",
    )
    p.add_argument(
        "--max-list-items",
        type=int,
        default=DEFAULT_MAX_LIST_ITEMS,
        help=f"most objects one list reads (default {DEFAULT_MAX_LIST_ITEMS})",
    )
    return p


def from_args(argv: Sequence[str] | None = None) -> Settings:
    """Parse flags; a bad combination exits with the parser's usage message."""
    p = parser()
    args = p.parse_args(argv)
    try:
        return Settings(
            host=args.host,
            port=args.port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            local_credentials=args.local_credentials,
            kubeconfig=args.kubeconfig,
            context=args.context,
            local_run=args.local_run,
            key_namespace=args.key_namespace,
            gateway_admin_url=args.gateway_admin_url,
            gateway_admin_token=args.gateway_admin_token,
            max_workers=args.max_workers,
            max_message_bytes=args.max_message_bytes,
            kube_timeout=args.kube_timeout,
            gateway_timeout=args.gateway_timeout,
            auth_cache_seconds=args.auth_cache_seconds,
            max_list_items=args.max_list_items,
            public_run_url=args.public_run_url,
            public_queue_url=args.public_queue_url,
            deploy_timeout=args.deploy_timeout,
            max_deploys=args.max_deploys,
            gateway_rest_url=args.gateway_rest_url,
            gateway_rest_ca=args.gateway_rest_ca,
            rest_max_connections=args.rest_max_connections,
            rest_max_header_bytes=args.rest_max_header_bytes,
            rest_header_timeout=args.rest_header_timeout,
            rest_max_body_bytes=args.rest_max_body_bytes,
            log_max_bytes=args.log_max_bytes,
            log_max_lines=args.log_max_lines,
            log_streams=args.log_streams,
            log_stream_seconds=args.log_stream_seconds,
        )
    except ValueError as error:
        p.error(str(error))
