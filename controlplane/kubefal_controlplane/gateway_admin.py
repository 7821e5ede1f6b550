"""Each runner's in-flight requests (leases) and idle time, from the gateway's admin listener.

Pods tell whether a runner is pending, setting up, ready or terminating; only the gateway
knows whether a ready runner is serving (``RUNNING``, with the requests it works on: fal's
leases) or idle (``IDLE``, with the keep-alive countdown). It publishes that at
``GET /_kubefal/runners`` (``?app=<ns>/<name>`` for one app, ``?namespaces=a,b`` for the apps
of some namespaces): one call answers ``fal runners list`` for every app. Without a gateway URL,
or when the gateway does not answer in time, runners are reported from their pods alone (a
ready runner is ``RUNNING`` with no in-flight count) and :func:`runners` returns None.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request

from kubefal_controlplane import mapping

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""The gateway's answer for every app of a cluster (about 200 bytes a runner, more with leases)."""
RUNNERS_PATH = "/_kubefal/runners"

Details = dict[str, dict[str, mapping.RunnerDetail]]
"""App id (``<namespace>/<name>``) -> pod name -> what the gateway knows of that runner."""


def runners(
    base_url: str | None,
    *,
    app_id: str | None = None,
    namespaces: tuple[str, ...] | None = None,
    timeout: float,
    token: str | None = None,
) -> Details | None:
    """The gateway's runners of one app (``app_id``), of ``namespaces``, or of every app; None
    when unknown (no URL, no answer). ``token`` is the admin listener's bearer token (a
    gateway started with ``--admin-token`` answers 401 without it)."""
    if not base_url:
        return None
    query: dict[str, str] = {}
    if app_id is not None:
        query["app"] = app_id
    elif namespaces is not None:
        if not namespaces:
            return {}
        query["namespaces"] = ",".join(namespaces)
    url = base_url.rstrip("/") + RUNNERS_PATH
    if query:
        url += "?" + urllib.parse.urlencode(query)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    what = app_id or (",".join(namespaces) if namespaces else "every app")
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        ) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as error:
        if error.code == 404 and app_id is not None:
            return {app_id: {}}  # the gateway has not seen the app (yet): no runner serves
        logger.info("gateway runners of %s unavailable: %s", what, error)
        return None
    except (urllib.error.URLError, OSError, ValueError) as error:
        logger.info("gateway runners of %s unavailable: %s", what, error)
        return None
    if len(body) > MAX_RESPONSE_BYTES:
        logger.warning("gateway runners of %s: larger than %d bytes", what, MAX_RESPONSE_BYTES)
        return None
    try:
        return mapping.parse_runners(json.loads(body))
    except ValueError:
        return None


def runner_details(
    base_url: str | None,
    *,
    namespace: str,
    name: str,
    timeout: float,
    token: str | None = None,
) -> dict[str, mapping.RunnerDetail] | None:
    """Pod name -> detail for one app; None when the gateway's view is unknown."""
    app_id = f"{namespace}/{name}"
    found = runners(base_url, app_id=app_id, timeout=timeout, token=token)
    return None if found is None else found.get(app_id, {})
