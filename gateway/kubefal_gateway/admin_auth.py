"""Bearer-token authentication of the admin listener's non-probe endpoints.

Why it exists: the admin port serves the scaling signals (every app's queue depth, in-flight
requests and runner pod IPs, and a stream the operator scales from) and the metrics; without
auth anyone who can reach the port reads them. With `--admin-token` (the chart keeps it in a
Secret shared with the operator), every admin path except the kubelet's probes (`/healthz`,
`/readyz`) needs `Authorization: Bearer <token>`; `/metrics` needs it too with
`--admin-token-metrics`. The comparison is constant-time; a missing or wrong token gets 401 with
a JSON `detail` and `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from kubefal_api import naming
from kubefal_gateway import errors

PROBE_PATHS = frozenset({"/healthz", "/readyz"})
ANNOUNCE_PATH = naming.RUNNER_ANNOUNCE_PATH
"""Runners announce themselves here; they hold no admin token: the gateway checks the caller's
IP against the runner pods it watches instead (discovery.py)."""


def needs_token(path: str, *, token: str, protect_metrics: bool) -> bool:
    if not token or path in PROBE_PATHS or path == ANNOUNCE_PATH:
        return False
    return path != "/metrics" or protect_metrics


def check(headers: Iterable[tuple[bytes, bytes]], *, token: str) -> None:
    """Raise 401 unless the request carries `Authorization: Bearer <token>`."""
    presented = b""
    for name, value in headers:
        if name == b"authorization":
            presented = value
            break
    scheme, _, credentials = presented.partition(b" ")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(
        credentials.strip(), token.encode("utf-8")
    ):
        raise errors.MissingCredentials(
            "The admin API needs 'Authorization: Bearer <admin token>'",
            headers=((b"www-authenticate", b'Bearer realm="kubefal-admin"'),),
        )
