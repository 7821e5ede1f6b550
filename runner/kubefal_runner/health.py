"""The runner's health check: the app's configured check (or the SDK's ``GET /health``) called
in-process, with a timeout, as fal's platform calls it.

Why a module of its own: how a check is run and judged (one ASGI request straight into the app,
no socket; 2xx within the timeout is healthy) is separate from when it runs and what the probes
answer, which is `asgi.RunnerASGI`'s business.
"""

from __future__ import annotations

import asyncio
import collections.abc
import time
from typing import Any

from kubefal_runner import lifespan

Message = lifespan.Message

DEFAULT_HEALTH_CHECK_TIMEOUT_SECONDS = 5.0


class HealthCheckResult:
    """Outcome of one health check: healthy or not, and what the app answered."""

    def __init__(self, *, healthy: bool, status_code: int | None, detail: str) -> None:
        self.healthy = healthy
        self.status_code = status_code
        self.detail = detail


async def call_in_process(
    app: lifespan.ASGIApp,
    *,
    method: str,
    path: str,
    body: bytes,
    headers: collections.abc.Sequence[tuple[bytes, bytes]] = (),
) -> tuple[int, bytes]:
    """Send one HTTP request straight to an ASGI app (no socket) and return status and body."""
    request_sent = False
    response_started = False
    response_complete = asyncio.Event()
    status = 500
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await response_complete.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, response_started
        if message["type"] == "http.response.start":
            status = int(message["status"])
            response_started = True
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                response_complete.set()

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        "client": None,
        "server": None,
        "state": {},
    }
    try:
        await app(scope, receive, send)
    except Exception:
        # Starlette re-raises an endpoint's exception after its error handler sent the 500.
        if not response_started:
            raise
    finally:
        response_complete.set()
    return status, b"".join(chunks)


async def check(
    app: lifespan.ASGIApp,
    health_check: collections.abc.Mapping[str, Any] | None,
    *,
    headers: collections.abc.Sequence[tuple[bytes, bytes]] = (),
) -> HealthCheckResult:
    """Run the app's configured health check in-process, else the SDK's ``GET /health``."""
    if health_check is None:
        method, path, timeout, body = (
            "GET",
            "/health",
            DEFAULT_HEALTH_CHECK_TIMEOUT_SECONDS,
            b"",
        )
    else:
        method = str(health_check["method"])
        path = str(health_check["path"])
        timeout = float(health_check["timeout_seconds"] or DEFAULT_HEALTH_CHECK_TIMEOUT_SECONDS)
        body = b"" if method in ("GET", "HEAD") else b"{}"
    started = time.monotonic()
    try:
        status, response_body = await asyncio.wait_for(
            call_in_process(app, method=method, path=path, body=body, headers=headers),
            timeout=timeout,
        )
    except TimeoutError:
        return HealthCheckResult(
            healthy=False,
            status_code=None,
            detail=f"{method} {path} did not answer within {timeout:g} s",
        )
    except Exception as error:
        return HealthCheckResult(
            healthy=False, status_code=None, detail=f"{method} {path} raised {error!r}"
        )
    elapsed = time.monotonic() - started
    healthy = 200 <= status < 300
    detail = f"{method} {path} answered {status} in {elapsed:.3f} s"
    if not healthy:
        detail += ": " + response_body[:500].decode("utf-8", "replace")
    return HealthCheckResult(healthy=healthy, status_code=status, detail=detail)
