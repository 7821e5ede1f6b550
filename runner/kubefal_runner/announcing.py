"""Tell the gateway this runner finished setup(), so its first request need not wait for the
Pod's Ready condition to reach the gateway through the kubelet, the API server and a watch.

``KUBEFAL_GATEWAY_ANNOUNCE_URL`` (``http://host:port/_kubefal/runners/ready``, the gateway's
admin listener) turns it on. The POST is sent from the pod's own IP (``KUBEFAL_POD_IP``, bound
as the source address when set) with ``{"pod": KUBEFAL_POD_NAME}``; the gateway accepts it only
from the IP of a runner pod it watches, so the runner needs no secret. Best effort: any failure
is logged and the Pod watch makes the runner ready a little later. Standard library only: this
runs inside every user image.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import urllib.parse
from collections.abc import Mapping

logger = logging.getLogger("kubefal_runner")

ANNOUNCE_URL_VARIABLE = "KUBEFAL_GATEWAY_ANNOUNCE_URL"
ANNOUNCE_TIMEOUT_SECONDS = 2.0


def announcement(pod_name: str) -> bytes:
    """The body of an announcement (kubefal_api.messages.RunnerAnnouncement; the runner does not
    import kubefal_api, tests/api/test_shared_contracts.py holds the two together)."""
    return json.dumps({"pod": pod_name} if pod_name else {}).encode()


def announce(environ: Mapping[str, str] = os.environ) -> bool:
    """POST the announcement if configured; True when the gateway accepted it."""
    url = environ.get(ANNOUNCE_URL_VARIABLE, "").strip()
    if not url:
        return False
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or not parsed.hostname:
        logger.warning(
            "%s must be an http:// URL, not %r: not announcing", ANNOUNCE_URL_VARIABLE, url
        )
        return False
    source_ip = environ.get("KUBEFAL_POD_IP", "").strip()
    pod_name = environ.get("KUBEFAL_POD_NAME", "").strip()
    body = announcement(pod_name)
    connection = http.client.HTTPConnection(
        parsed.hostname,
        parsed.port or 80,
        timeout=ANNOUNCE_TIMEOUT_SECONDS,
        source_address=(source_ip, 0) if source_ip else None,
    )
    try:
        connection.request(
            "POST",
            parsed.path or "/",
            body=body,
            headers={"content-type": "application/json"},
        )
        response = connection.getresponse()
        response.read(4096)
    except OSError as error:
        logger.warning("could not announce readiness to the gateway: %s", error)
        return False
    finally:
        connection.close()
    if response.status != 200:
        logger.warning("the gateway refused the readiness announcement: %d", response.status)
        return False
    logger.info("announced readiness to the gateway")
    return True
