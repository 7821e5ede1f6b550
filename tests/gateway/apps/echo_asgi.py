"""A stand-in runner that shows what the gateway wrote on the wire: served by uvicorn (as runners
are), it answers every request with its method, raw path, query string, headers and body.

`GET /_kubefal/ready` answers 200 so the gateway marks it ready. A JSON body with `"size": N`
makes the answer carry N extra bytes (`"pad"`), for result-size limits; `"chunked": true` sends
it without a content-length; `"sleep": S` answers after S seconds. With `$ECHO_LOG` set, each
request (but readiness probes) is logged there as a JSON line: method, raw path, request id.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/_kubefal/ready":
        payload: dict[str, Any] = {"ready": True}
    else:
        log = os.environ.get("ECHO_LOG")
        if log:
            request_id = dict(scope["headers"]).get(b"x-fal-request-id", b"").decode()
            line = {"method": scope["method"], "raw_path": scope["raw_path"].decode()}
            with open(log, "a") as file:
                file.write(json.dumps({**line, "request_id": request_id}) + "\n")
        payload = {
            "method": scope["method"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body": body.decode("latin-1"),
        }
    size = 0
    chunked = False
    sleep = 0.0
    try:
        request = json.loads(body) if body else {}
        if isinstance(request, dict):
            size = int(request.get("size", 0))
            chunked = bool(request.get("chunked", False))
            sleep = float(request.get("sleep", 0))
    except ValueError:
        pass
    if sleep:
        await asyncio.sleep(sleep)
    encoded = json.dumps(payload).encode()
    if size:
        encoded = encoded[:-1] + b', "pad": "' + b"x" * size + b'"}'
    headers = [(b"content-type", b"application/json")]
    if not chunked:
        headers.append((b"content-length", str(len(encoded)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if chunked:
        step = 65536
        for offset in range(0, len(encoded), step):
            await send(
                {
                    "type": "http.response.body",
                    "body": encoded[offset : offset + step],
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.body", "body": encoded})
