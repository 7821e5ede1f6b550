"""Each runner's in-flight requests and idle time, from the gateway's admin listener.

Pods tell whether a runner is pending, setting up, ready or terminating; only the gateway
knows whether a ready runner is serving (``RUNNING``) or idle (``IDLE``, with the keep-alive
countdown). It publishes that per app at ``GET /_kubefal/apps/<namespace>/<name>/scaling``.
Without a gateway URL, or when the gateway does not answer in time, runners are reported from
their pods alone (a ready runner is ``RUNNING`` with no in-flight count).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request

from kubefal_controlplane import mapping

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 4 * 1024 * 1024


def runner_details(
    base_url: str | None,
    *,
    namespace: str,
    name: str,
    timeout: float,
    token: str | None = None,
) -> dict[str, mapping.RunnerDetail]:
    """Pod name -> detail for one app; empty when unknown. ``token`` is the admin listener's
    bearer token (a gateway started with ``--admin-token`` answers 401 without it)."""
    if not base_url:
        return {}
    path = "/_kubefal/apps/{}/{}/scaling".format(
        urllib.parse.quote(namespace, safe=""), urllib.parse.quote(name, safe="")
    )
    url = base_url.rstrip("/") + path
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        ) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        logger.info("gateway detail for %s/%s unavailable: %s", namespace, name, error)
        return {}
    if len(body) > MAX_RESPONSE_BYTES:
        logger.warning(
            "gateway detail for %s/%s is larger than %d bytes", namespace, name, MAX_RESPONSE_BYTES
        )
        return {}
    try:
        return mapping.parse_runner_details(json.loads(body))
    except ValueError:
        return {}
