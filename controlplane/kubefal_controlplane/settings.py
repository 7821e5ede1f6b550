"""The control plane's settings: command-line flags, each with an environment variable.

Every limit the server applies (worker threads, message size, list sizes, Kubernetes and
gateway timeouts) has a default here and a flag, so an operator can see and change it. Each
field is a flag (``--max-workers``) and an environment variable (``KUBEFAL_CONTROLPLANE_<FIELD>``,
or the shared name an ``Env`` marker gives, e.g. ``KUBEFAL_KEY_NAMESPACE``); a flag wins. The
loader, the help text and the error messages are ``kubefal_api.process_settings``'s.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence
from typing import Annotated, ClassVar, Self

import pydantic
from pydantic import Field

from kubefal_api.process_settings import Env, ProcessSettings

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
DEFAULT_MAX_CONNECTIONS_PER_IP = 32
DEFAULT_GRPC_IDLE_TIMEOUT_SECONDS = 300.0
DEFAULT_AUTH_FAILURES_PER_KEY = 10
DEFAULT_AUTH_FAILURES_PER_IP = 60
DEFAULT_AUTH_MAX_TRACKED = 10_000
DEFAULT_REST_MAX_HEADER_BYTES = 32 * 1024
DEFAULT_REST_HEADER_TIMEOUT_SECONDS = 10.0
DEFAULT_REST_MAX_BODY_BYTES = 1024 * 1024 * 1024
DEFAULT_LOG_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_LOG_MAX_LINES = 50_000
DEFAULT_LOG_STREAMS = 32
DEFAULT_LOG_STREAM_SECONDS = 3600.0


class Settings(ProcessSettings):
    """Everything :class:`kubefal_controlplane.server.ControlPlane` needs to start."""

    env_prefix: ClassVar[str] = "KUBEFAL_CONTROLPLANE_"

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(
        default=DEFAULT_PORT,
        ge=0,
        le=65535,
        description="Port to listen on (0: any free port; ControlPlane.port tells which).",
    )
    tls_cert: pathlib.Path | None = Field(
        default=None,
        description="PEM server certificate (with its chain); required unless --local-credentials.",
    )
    tls_key: pathlib.Path | None = Field(default=None, description="PEM private key of --tls-cert.")
    local_credentials: bool = Field(
        default=False,
        description="Serve gRPC local credentials instead of TLS (clients with "
        "ISOLATE_TEST_MODE=1 on this host).",
    )
    kubeconfig: Annotated[pathlib.Path | None, Env("KUBECONFIG")] = Field(
        default=None, description="Kubeconfig file; unset: the pod's in-cluster ServiceAccount."
    )
    local_run: pathlib.Path | None = Field(
        default=None,
        description="Run directory of a `kubefal run`: serve its one app (no Kubernetes), see "
        "kubefal_controlplane.local; `kubefal run` sets it.",
    )
    context: str | None = Field(
        default=None, description="Kubeconfig context (default: the current one)."
    )
    key_namespace: Annotated[str, Env("KUBEFAL_KEY_NAMESPACE")] = Field(
        default=DEFAULT_KEY_NAMESPACE,
        description="Namespace of the API-key Secrets (the same the gateway and `kubefal keys` "
        "use).",
    )
    gateway_admin_url: Annotated[str | None, Env("KUBEFAL_GATEWAY_ADMIN_URL")] = Field(
        default=None,
        description="The gateway's admin listener (http://127.0.0.1:9090), for each runner's "
        "in-flight requests and idle time.",
    )
    gateway_admin_token: Annotated[str | None, Env("KUBEFAL_GATEWAY_ADMIN_TOKEN")] = Field(
        default=None,
        description="Bearer token of that listener (the gateway's --admin-token); unset: none "
        "sent.",
    )
    max_workers: int = Field(
        default=DEFAULT_MAX_WORKERS,
        ge=1,
        le=256,
        description="Calls served at once; further calls wait in gRPC's queue.",
    )
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES,
        ge=1024,
        le=512 * 1024 * 1024,
        description="Largest request and response message, in bytes.",
    )
    kube_timeout: float = Field(
        default=DEFAULT_KUBE_TIMEOUT_SECONDS,
        gt=0,
        description="Seconds one Kubernetes API request may take.",
    )
    gateway_timeout: float = Field(
        default=DEFAULT_GATEWAY_TIMEOUT_SECONDS,
        gt=0,
        description="Seconds one request to the gateway's admin listener may take.",
    )
    auth_cache_seconds: float = Field(
        default=DEFAULT_AUTH_CACHE_SECONDS,
        ge=0,
        description="How long a verified key's hash check is remembered (revocation is read on "
        "every call).",
    )
    auth_failures_per_key: int = Field(
        default=DEFAULT_AUTH_FAILURES_PER_KEY,
        ge=0,
        le=1_000_000,
        description="API-key hash checks per minute (burst as large) per key id; a check that "
        "matches gives its token back, so only failures count; beyond: RESOURCE_EXHAUSTED "
        "(REST: 429) without hashing; 0: unlimited.",
    )
    auth_failures_per_ip: int = Field(
        default=DEFAULT_AUTH_FAILURES_PER_IP,
        ge=0,
        le=1_000_000,
        description="API-key hash checks per minute (burst as large) per client IP, counted "
        "like --auth-failures-per-key; 0: unlimited.",
    )
    auth_max_tracked: int = Field(
        default=DEFAULT_AUTH_MAX_TRACKED,
        ge=16,
        le=10_000_000,
        description="Most key ids, and most client IPs, the failed-check throttles remember "
        "(beyond: refilled entries, then the oldest half, are forgotten).",
    )
    max_list_items: int = Field(
        default=DEFAULT_MAX_LIST_ITEMS,
        ge=1,
        le=100_000,
        description="Most objects one list call reads from the Kubernetes API (apps, pods, keys).",
    )
    public_run_url: Annotated[str | None, Env("KUBEFAL_PUBLIC_RUN_URL")] = Field(
        default=None,
        description="Base URL of the gateway's run listener as clients reach it (fal deploy "
        "prints <it>/<namespace>/<app>); unset: the FalApp's status.endpoints.run.",
    )
    public_queue_url: Annotated[str | None, Env("KUBEFAL_PUBLIC_QUEUE_URL")] = Field(
        default=None,
        description="Base URL of the gateway's queue listener as clients reach it.",
    )
    deploy_timeout: float = Field(
        default=DEFAULT_DEPLOY_TIMEOUT_SECONDS,
        gt=0,
        description="Longest a `fal deploy` waits for its runners to be ready, in seconds.",
    )
    max_deploys: int = Field(
        default=DEFAULT_MAX_DEPLOYS,
        ge=1,
        le=256,
        description="`fal deploy` calls served at once; each holds a worker thread until its "
        "runners are ready (up to --deploy-timeout), so more are refused with "
        "RESOURCE_EXHAUSTED rather than left to take every worker; at most --max-workers minus "
        "1 are used, so other calls keep one.",
    )
    gateway_rest_url: Annotated[str | None, Env("KUBEFAL_GATEWAY_REST_URL")] = Field(
        default=None,
        pattern=r"^https?://",
        description="The gateway's REST listener (https://host:port) as the control plane "
        "reaches it: /files/* on the control plane's port is relayed there, and fal deploy "
        "reads the app_files it stored; unset: those paths answer 503.",
    )
    gateway_rest_ca: Annotated[pathlib.Path | None, Env("KUBEFAL_GATEWAY_REST_CA")] = Field(
        default=None,
        description="PEM bundle that verifies the gateway REST listener's certificate; the "
        "system CAs when unset or when the file does not exist.",
    )
    rest_max_connections: int = Field(
        default=DEFAULT_REST_MAX_CONNECTIONS,
        ge=1,
        le=100_000,
        description="Connections the TLS front door holds open at once (gRPC and REST together).",
    )
    max_connections_per_ip: int = Field(
        default=DEFAULT_MAX_CONNECTIONS_PER_IP,
        ge=0,
        le=100_000,
        description="Connections the TLS front door holds open at once from one client IP "
        "(further ones are closed before the handshake); 0: no per-IP limit (behind a proxy "
        "that hides client addresses).",
    )
    grpc_idle_timeout: float = Field(
        default=DEFAULT_GRPC_IDLE_TIMEOUT_SECONDS,
        gt=0,
        le=86_400,
        description="Seconds a gRPC connection may stay open with no call in progress; then "
        "it is closed (GOAWAY; clients reconnect for their next call).",
    )
    rest_max_header_bytes: int = Field(
        default=DEFAULT_REST_MAX_HEADER_BYTES,
        ge=1024,
        le=1024 * 1024,
        description="Largest REST request line plus headers (431 beyond).",
    )
    rest_header_timeout: float = Field(
        default=DEFAULT_REST_HEADER_TIMEOUT_SECONDS,
        gt=0,
        le=600,
        description="Seconds for the TLS handshake, for a REST request's head, between "
        "body chunks, and for the client to take each part of an answer.",
    )
    rest_max_body_bytes: int = Field(
        default=DEFAULT_REST_MAX_BODY_BYTES,
        ge=0,
        le=64 * 1024**3,
        description="Largest REST request body relayed to the gateway (413 beyond).",
    )
    log_max_bytes: int = Field(
        default=DEFAULT_LOG_MAX_BYTES,
        ge=1024,
        le=1024**3,
        description="Most bytes of a runner's log one /logs/history page reads from Kubernetes.",
    )
    log_max_lines: int = Field(
        default=DEFAULT_LOG_MAX_LINES,
        ge=1,
        le=10_000_000,
        description="Most (newest) lines of a runner's log one /logs/history page looks at.",
    )
    log_streams: int = Field(
        default=DEFAULT_LOG_STREAMS,
        ge=0,
        le=10_000,
        description="/logs/stream (fal runners logs --follow) connections served at once (429 "
        "beyond).",
    )
    log_stream_seconds: float = Field(
        default=DEFAULT_LOG_STREAM_SECONDS,
        gt=0,
        le=86_400,
        description="Longest one /logs/stream lasts; the CLI's user runs it again to go on.",
    )

    @property
    def deploy_slots(self) -> int:
        """``fal deploy`` calls served at once: ``max_deploys``, below ``max_workers``."""
        return max(1, min(self.max_deploys, self.max_workers - 1))

    @pydantic.model_validator(mode="after")
    def _tls_unless_local_credentials(self) -> Self:
        if not self.local_credentials and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key are required (or --local-credentials)")
        return self


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m kubefal_controlplane``."""
    return Settings.build_parser(
        prog="python -m kubefal_controlplane",
        description=(
            "Serve fal's IsolateController gRPC API (the `fal` CLI and SyncServerlessClient, "
            "via FAL_GRPC_HOST) from FalApps, runner pods, API-key Secrets and Secrets. "
            "Every flag also reads the environment variable named in its help."
        ),
    )


def from_args(argv: Sequence[str] | None = None) -> Settings:
    """Settings from flags, then the process's environment, then defaults; a bad value exits
    naming the flag and its variable."""
    return Settings.load(argv, parser=parser())
