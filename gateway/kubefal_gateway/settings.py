"""Gateway settings: one frozen object built at start-up from flags and environment variables.

Every field is a flag (`--queue-port`) and an environment variable `KUBEFAL_GATEWAY_<FIELD>`
(`KUBEFAL_GATEWAY_QUEUE_PORT`); a flag on the command line wins over the environment. The
loader, `--help` (each field's description) and the error messages are the shared ones of
`kubefal_api.process_settings`.

Static configuration (`--static-config PATH`, YAML or JSON) is the local mode: apps, their runner
URLs and API keys come from the file instead of the Kubernetes API. `kubefal run` writes one::

    apps:
      - id: local/my-app                # {namespace}/{name}, the id clients call
        auth: shared                    # private | shared | public (default: private)
        runners:                        # runner base URLs; readiness is probed on
          - http://127.0.0.1:18080      #   GET <url>/_kubefal/ready
        maxMultiplexing: 1              # concurrent requests per runner (default 1)
        requestTimeout: 3600            # seconds a runner may spend on one request
        skipRetryConditions: []         # any of: timeout, server_error, connection_error
        scaling:                        # optional; camelCase as in the FalApp CRD
          minConcurrency: 0
          maxConcurrency: 10
          keepAlive: 60
    keys:
      - key: kf0123456789abcdef:SECRET  # a full key (hashed in memory at start-up), or
      - id: kf0123456789abcdef          # a stored record, as written by `kubefal keys create`
        hash: scrypt$16384$8$1$...
        namespaces: "*"                 # comma list or "*" (default "*")
        revoked: false

Without `--static-config` the gateway discovers apps (FalApp objects), runners (their Pods) and
API keys (Secrets labelled `kubefal.io/api-key=true`) through the Kubernetes API.

This module is over 500 lines because it is the gateway's one settings model: every flag
with the description that is also its ``--help`` text, and the checks that involve more than
one setting; split, the help and the cross-checks would no longer be read in one place.
"""

from __future__ import annotations

import argparse
import ipaddress
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

from pydantic import Field

from kubefal_api.process_settings import ProcessSettings

ENV_PREFIX = "KUBEFAL_GATEWAY_"
SERVICE_ACCOUNT_NAMESPACE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class Settings(ProcessSettings):
    """Everything the gateway process is configured with."""

    env_prefix: ClassVar[str] = ENV_PREFIX

    host: str = Field(
        default="127.0.0.1",
        description=("Address every listener binds to (`0.0.0.0` in a pod)."),
    )
    queue_port: int = Field(
        default=8443,
        description=(
            "Port of the queue API (`FAL_QUEUE_RUN_HOST`). 0 disables a separate queue listener."
        ),
    )
    run_port: int = Field(
        default=8444,
        description=(
            "Port of the sync/stream/realtime API (`FAL_RUN_HOST`). When it equals "
            "`queue_port`, one listener serves both and picks the API by the Host header "
            "(`queue.` prefix → queue API)."
        ),
    )
    admin_port: int = Field(
        default=9090,
        description=("Plain-HTTP port for /metrics, /healthz, /readyz and the scaling signals."),
    )
    keda_port: int = Field(
        default=0,
        description=(
            "Port of KEDA's external scaler gRPC service (`externalscaler.ExternalScaler`, "
            "plain gRPC); 0 disables it."
        ),
    )
    external_metrics_port: int = Field(
        default=0,
        description=(
            "Port of the `external.metrics.k8s.io/v1beta1` API for HPAs (served with "
            "`tls_cert`, as the API aggregator requires HTTPS); 0 disables it."
        ),
    )
    tls_cert: pathlib.Path | None = Field(
        default=None,
        description=(
            "PEM certificate chain served on the queue and run listeners (both or neither "
            "with key)."
        ),
    )
    tls_key: pathlib.Path | None = Field(
        default=None,
        description=("PEM private key matching `tls_cert`."),
    )
    store: str = Field(
        default="sqlite:///kubefal-queue.db",
        description=(
            "Queue backend: `sqlite:///path/to/file.db` (one gateway replica per file) or "
            "`redis://host:port/db` (replicas share the queue, runner slots and webhook "
            "outbox), or `redis+sentinel://host:port[,host:port...]/service[/db]` to follow "
            "Sentinel failovers."
        ),
    )
    static_config: pathlib.Path | None = Field(
        default=None,
        description=(
            "YAML/JSON file with apps, runners and keys (local mode); see the module docstring."
        ),
    )
    kubeconfig: pathlib.Path | None = Field(
        default=None,
        description=(
            "Kubeconfig for discovery; without it and without `static_config`, in-cluster config."
        ),
    )
    key_namespace: str | None = Field(
        default=None,
        description=(
            "Namespace holding API-key Secrets. Default: the gateway pod's own namespace; "
            "outside a pod (Kubernetes discovery without a service account) it must be "
            "given: a namespace, or `*` for every namespace the kubeconfig's user can list "
            "(the gateway refuses to start otherwise)."
        ),
    )
    result_ttl: float = Field(
        default=24 * 3600.0,
        description=("Seconds a finished request's result stays readable."),
    )
    max_request_bytes: int = Field(
        default=32 * 1024 * 1024,
        description=("Largest accepted request body; larger ones get 413."),
    )
    max_queued_per_app: int = Field(
        default=10_000,
        description=(
            "Most queued (not yet started) requests one app may have; a submit beyond that "
            "gets 429 with `Retry-After` and is not accepted. Enforced atomically by the "
            "store, across gateway replicas sharing a Redis. 0: no limit."
        ),
    )
    max_result_bytes: int = Field(
        default=64 * 1024 * 1024,
        description=(
            "Largest runner answer the gateway buffers: a queued request's stored result or "
            "a sync run's (not streamed) answer. A larger one is not read further and "
            "becomes a 413 `result_too_large` error."
        ),
    )
    max_job_header_bytes: int = Field(
        default=64 * 1024,
        description=(
            "Largest sum of header names and values a queued request stores (431 beyond); "
            "they count against `max_request_bytes` together with the body."
        ),
    )
    max_url_bytes: int = Field(
        default=8192,
        description=("Longest raw path plus query string of a run or a submit (414 beyond)."),
    )
    run_start_timeout: float = Field(
        default=300.0,
        description=(
            "Longest a sync request (run, stream, realtime) waits for a runner slot, also "
            "at zero runners; a smaller `X-Fal-Request-Timeout` wins. Then 504 "
            "`request_timeout` (with `x-fal-request-timeout-type`, so fal_client does not "
            "resend it)."
        ),
    )
    retry_budget: float = Field(
        default=30.0,
        description=(
            "Seconds after a queued job's first attempt in which retries may start (with "
            "the app's `requestTimeout` per attempt, a job's dispatch ends within "
            "`requestTimeout + retry_budget`). Sync requests are never retried."
        ),
    )
    upstream_idle_seconds: float = Field(
        default=60.0,
        description=(
            "A pooled connection to a runner idle longer than this is closed instead of "
            "reused (keep it below the runners' keep-alive timeout, 300 s)."
        ),
    )
    runner_port: int = Field(
        default=8080,
        description=("Port runners listen on inside their pods (Kubernetes mode)."),
    )
    runner_probe_interval: float = Field(
        default=1.0,
        description=("Seconds between readiness probes of a runner (`GET /_kubefal/ready`)."),
    )
    status_hold_seconds: float = Field(
        default=0.25,
        ge=0,
        le=10,
        description=(
            "A status poll (without logs) of a queued or running job waits up to this long "
            "for the job to finish before it answers IN_QUEUE or IN_PROGRESS; a job that "
            "finishes meanwhile is answered COMPLETED at once. A client polling every 0.1 s "
            "(fal_client) then learns of the result without waiting for its next poll, and "
            "sends fewer polls (docs/design-decisions.md). 0 answers at once; at most 10."
        ),
    )
    lease_seconds: float = Field(
        default=30.0,
        description=(
            "A dispatched queued job is leased for this long and renewed while it runs, so "
            "another gateway replica takes it over if this one dies."
        ),
    )
    max_attempts: int = Field(
        default=10,
        description=(
            "Attempts per request on retryable failures (fal's limit). Queued jobs whose "
            "dispatch was interrupted (the gateway died, the lease ran out) count against "
            "it too: a job interrupted this often completes with a 503 `attempts_exhausted` "
            "error instead of running again."
        ),
    )
    redis_timeout: float = Field(
        default=2.0,
        description=(
            "Redis store: seconds to connect, and seconds Redis may stay silent while "
            "replies are outstanding, before the connection is dropped; calls then fail "
            "(submits answer 503 JSON) and /readyz reports not ready until Redis answers "
            "again (reconnects back off 0.05 s to 1 s)."
        ),
    )
    removed_app_grace: float = Field(
        default=600.0,
        description=(
            "Seconds an app may be missing from discovery (or the static config) before its "
            "queued requests complete with a 404 `app_not_found` error (their webhooks "
            "fire) instead of waiting forever; an app that comes back in time keeps its "
            "queue. 0 disables this."
        ),
    )
    webhook_secret: str = Field(
        default="",
        description=(
            "HMAC-SHA256 key signing webhook deliveries (`X-Kubefal-Signature`, scheme in "
            "webhooks.py); share it with the receivers. Empty: webhooks are sent unsigned "
            "(a warning is logged)."
        ),
    )
    webhook_allow: str = Field(
        default="",
        description=(
            "Comma list of CIDRs (`127.0.0.1/32`, `10.1.0.0/16`) and host names "
            "(`hooks.internal`) webhooks may be delivered to although they are loopback, "
            "link-local, private, CGNAT, multicast, unspecified, IPv6 ULA or in "
            "`webhook_deny` (all refused by default)."
        ),
    )
    webhook_deny: str = Field(
        default="",
        description=(
            "Comma list of extra CIDRs webhooks are never delivered to unless allowed: the "
            "cluster's service and pod CIDRs when they are not private ranges."
        ),
    )
    webhook_timeout: float = Field(
        default=10.0,
        gt=0,
        description=("Seconds one webhook attempt may take in total (DNS, connect, send, answer)."),
    )
    webhook_max_attempts: int = Field(
        default=10,
        ge=1,
        description=("Delivery attempts of one webhook before it is given up."),
    )
    webhook_base_delay: float = Field(
        default=15.0,
        description=(
            "Seconds before the second attempt; doubles per attempt (times a 0.5-1.5 jitter)."
        ),
    )
    webhook_max_delay: float = Field(
        default=1800.0,
        description=("Cap of the delay between two attempts, in seconds."),
    )
    webhook_concurrency: int = Field(
        default=64,
        ge=1,
        description=("Webhook attempts in flight at once per gateway, all tenants together."),
    )
    webhook_tenant_concurrency: int = Field(
        default=4,
        ge=1,
        description=(
            "Webhook attempts in flight at once per tenant (an app's namespace), so a slow "
            "receiver only slows its own tenant's webhooks."
        ),
    )
    webhook_tenant_queue: int = Field(
        default=32,
        description=(
            "Webhooks held per tenant waiting for one of its slots; more are put back in "
            "the outbox for a second."
        ),
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1,
        description=(
            "Largest request line plus headers of one request, in bytes; larger ones get "
            "431 and the connection is closed (queue, run and admin listeners)."
        ),
    )
    max_headers: int = Field(
        default=128,
        ge=1,
        description=(
            "Most header fields in one request; more get 431 and the connection is closed."
        ),
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Seconds from a connection's start (or the first byte of a following request) "
            "to the end of the request's headers; slower connections get 408 and are closed "
            "(slowloris)."
        ),
    )
    tls_handshake_timeout: float = Field(
        default=10.0,
        gt=0,
        description=("Seconds a client may take to complete the TLS handshake."),
    )
    idle_timeout: float = Field(
        default=75.0,
        gt=0,
        description=(
            "Seconds an idle keep-alive connection stays open between requests; also how long "
            "a zero-copy file download (plain-TCP REST listener) waits for a client that reads "
            "nothing before it disconnects it."
        ),
    )
    max_connections: int = Field(
        default=4096,
        ge=1,
        description=("Open connections per listener; further ones are closed at once."),
    )
    max_connections_per_ip: int = Field(
        default=0,
        description=(
            "Open connections per client IP address and listener; 0: no per-address cap (a "
            "load balancer in front may make every client the same address)."
        ),
    )
    key_cache_ttl: float = Field(
        default=300.0,
        description=(
            "Seconds a successful API-key verification is remembered without use (each use "
            "renews it; a changed or revoked key Secret ends it at once)."
        ),
    )
    key_verify_concurrency: int = Field(
        default=2,
        ge=1,
        description=("Threads computing API-key hashes (each costs tens of milliseconds of CPU)."),
    )
    key_verify_queue: int = Field(
        default=64,
        description=(
            "API-key verifications allowed to wait for those threads; beyond, callers get 429."
        ),
    )
    auth_failures_per_key: int = Field(
        default=10,
        description=(
            "Hash verifications per minute (and burst) per API-key id, known or not, that "
            "may fail; then 429 with Retry-After. 0: unlimited."
        ),
    )
    auth_failures_per_ip: int = Field(
        default=60,
        description=(
            "Hash verifications per minute (and burst) per client IP that may fail; then "
            "429 with Retry-After. 0: unlimited."
        ),
    )
    key_rate_limit: float = Field(
        default=1000.0,
        description=(
            "Requests per second per API key (token bucket); over it, 429 with Retry-After. "
            "0: no limit."
        ),
    )
    key_rate_burst: int = Field(
        default=2000,
        description=("Burst of the per-key rate limit (bucket size)."),
    )
    admin_token: str = Field(
        default="",
        description=(
            "Bearer token required on the admin listener's non-probe endpoints (scaling "
            "signals, and /metrics with `admin_token_metrics`); /healthz and /readyz stay "
            "open. Empty: no auth."
        ),
    )
    admin_token_metrics: bool = Field(
        default=False,
        description=("Require `admin_token` on /metrics too."),
    )
    rest_port: int = Field(
        default=0,
        description=(
            "Port of fal's REST/CDN API (files, upload tokens, realtime tokens): what "
            "clients reach as `FAL_REST_HOST` / fal_client's REST_URL and CDN_URL (TLS when "
            "configured); 0 disables it. Protocol: docs/fal-storage.md."
        ),
    )
    storage: str = Field(
        default="kubefal-files",
        description=(
            "Object store of uploaded files: a directory (embedded store, local disk or a "
            "volume) or `s3://bucket[/prefix]?endpoint=URL&region=R` (credentials from the "
            "usual AWS variables)."
        ),
    )
    storage_max_file_bytes: int = Field(
        default=1024**3,
        description=("Largest stored file in bytes; larger uploads get 413 and nothing is kept."),
    )
    storage_url_ttl: float = Field(
        default=7 * 86400.0,
        description=(
            "Seconds a returned file URL works without credentials; then 403. 0: until the "
            "file's retention ends."
        ),
    )
    storage_retention: float = Field(
        default=30 * 86400.0,
        description=(
            "Seconds an uploaded file is kept (an uploader may ask for less); 0: forever."
        ),
    )
    storage_upload_ttl: float = Field(
        default=86400.0,
        gt=0,
        description=(
            "Seconds an initiated upload (presigned PUT or multipart) may take; then it is "
            "refused (404) and the sweep removes its record and parts."
        ),
    )
    storage_max_open_uploads: int = Field(
        default=1000,
        ge=1,
        description=(
            "Unfinished initiated uploads one namespace may have at once; one more answers "
            "429 until one is finished or expires."
        ),
    )
    storage_sweep_interval: float = Field(
        default=600.0,
        description=(
            "Seconds between retention sweeps deleting expired files and abandoned uploads; "
            "0: none."
        ),
    )
    storage_signing_key: str = Field(
        default="",
        description=(
            "Key (16+ chars) signing file URLs, upload and realtime tokens; share it "
            "between replicas. Empty: a random key kept in the object store "
            "(`_kubefal/signing-key`)."
        ),
    )
    storage_namespace: str = Field(
        default="default",
        description=(
            "Namespace of files uploaded with a key valid in every namespace (`*`) that "
            "sends no `X-Kubefal-Namespace`; a key of one namespace always stores in that "
            "namespace."
        ),
    )
    storage_public_url: str = Field(
        default="",
        description=(
            "Base of the file URLs handed out (`https://files.example.com`); empty: the "
            "scheme and Host the uploader called."
        ),
    )
    realtime_token_max_ttl: float = Field(
        default=3600.0,
        description=("Longest lifetime of a realtime token issued on `POST /tokens/`, in seconds."),
    )
    data_root: str = Field(
        default="",
        description=(
            "Directory holding every namespace's `/data` (`<root>/<namespace>`, the volume "
            "runners mount at /data), served to `fal files` and `fal.sync_dir` on the REST "
            "listener; empty: off."
        ),
    )
    data_max_open_uploads: int = Field(
        default=64,
        ge=1,
        description=(
            "Multipart `/data` uploads (`fal files upload` over 10 MB) a namespace may have "
            "open at once; one more answers 429 until one is completed, cancelled or "
            "expired."
        ),
    )
    data_upload_ttl: float = Field(
        default=86400.0,
        gt=0,
        description=(
            "Seconds an open multipart `/data` upload may go without a part before the "
            "storage sweep (`--storage-sweep-interval`) removes it with its parts."
        ),
    )
    data_max_parts: int = Field(
        default=10_000,
        ge=1,
        description=(
            "Highest part number of a multipart `/data` upload (fal's client uses 10 MB parts)."
        ),
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description=("`uvloop` (default, faster) or `asyncio` (the standard library loop)."),
    )
    log_level: str = Field(
        default="info",
        description=(
            "Level of the gateway's own log lines (no per-request log lines on the hot path)."
        ),
    )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None


def build_parser() -> argparse.ArgumentParser:
    return Settings.build_parser(
        prog="python -m kubefal_gateway",
        description="kubefal queue gateway: fal's queue, sync and realtime API for your cluster.",
    )


def _check_webhook_lists(settings: Settings) -> None:
    for flag, text, hosts in (
        ("--webhook-allow", settings.webhook_allow, True),
        ("--webhook-deny", settings.webhook_deny, False),
    ):
        for item in (part.strip() for part in text.split(",") if part.strip()):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                if not hosts or not re.fullmatch(r"(\*\.)?[A-Za-z0-9_.-]{1,253}", item):
                    kind = "a CIDR or a host name" if hosts else "a CIDR"
                    raise SystemExit(f"{flag}: {item!r} is not {kind}") from None


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then environment variables, then defaults."""
    settings = Settings.load(argv, environ, parser=build_parser())
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise SystemExit("--tls-cert and --tls-key must be given together")
    if settings.external_metrics_port and not settings.tls:
        raise SystemExit("--external-metrics-port needs --tls-cert and --tls-key")
    if (
        settings.static_config is None
        and settings.key_namespace is None
        and not SERVICE_ACCOUNT_NAMESPACE.exists()
    ):
        raise SystemExit(
            "--key-namespace is required outside a pod: name the namespace holding the API-key "
            "Secrets, or pass --key-namespace '*' to read key Secrets in every namespace the "
            "kubeconfig's user can list"
        )
    _check_webhook_lists(settings)
    return settings
