"""fal's realtime API: WebSockets on the run listener, proxied verbatim to one runner.

A WebSocket authenticates with `Authorization: Key ...` (fal_client's `use_jwt=False`), with
`?fal_jwt_token=<realtime token>` (fal_client's default: a short-lived token from the REST
listener's `POST /tokens/`, storage/realtime.py) or with `?fal_jwt_token=<id>:<secret>`;
`fal_jwt_token` and `max_buffering` are not forwarded. A session holds one runner slot for its
lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse

import websockets
import websockets.asyncio.client

from kubefal_gateway import (
    apps,
    auth,
    dispatch,
    errors,
    queue_worker,
    queueing,
    runners,
)
from kubefal_gateway.http_api import (
    ApiPart,
    Receive,
    Scope,
    Send,
    client_host,
    header_value,
    query_params,
)
from kubefal_gateway.storage import realtime, signing

STRIPPED_WS_QUERY = frozenset({"fal_jwt_token", "max_buffering"})


class RealtimeApi(ApiPart):
    """The run listener's WebSocket handlers."""

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            namespace, name, subpath = self._forward_path(scope)
            params = query_params(scope)
            authorization = header_value(scope, b"authorization")
            token = params.get("fal_jwt_token")
            app = self.gateway.registry.get(f"{namespace}/{name}")
            if app is None:
                raise errors.NotFound(f"App {namespace}/{name} not found")
            signer = self.gateway.signer
            if (
                authorization is None
                and token
                and signer is not None
                and signing.is_realtime_token(token)
            ):
                # A token from POST /tokens/ (fal_client's default realtime(use_jwt=True)).
                realtime.authorize(self.gateway.keys, signer, token=token, app=app)
            else:
                await auth.authorize(
                    self.gateway.keys,
                    app=app,
                    authorization=authorization.decode("latin-1")
                    if authorization is not None
                    else (f"Key {token}" if token else None),
                    client=client_host(scope),
                )
        except errors.GatewayError as error:
            await receive()  # websocket.connect
            status, headers, body = errors.to_http(error)
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body})
            return
        slots = self.gateway.forwarder.slots_for(app)
        slots.sync_requests += 1
        try:
            await self._websocket_session(
                scope, receive, send, slots=slots, app=app, subpath=subpath, params=params
            )
        finally:
            slots.sync_requests -= 1

    async def _websocket_session(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        slots: dispatch.AppSlots,
        app: apps.AppConfig,
        subpath: str,
        params: dict[str, str],
    ) -> None:
        try:
            runner = await slots.acquire(timeout=self._run_wait(scope))
        except errors.GatewayError as error:
            await receive()
            await send({"type": "websocket.close", "code": 1013, "reason": error.detail[:120]})
            return
        try:
            await self._proxy_websocket(
                scope, receive, send, runner=runner, subpath=subpath, params=params, app=app
            )
        finally:
            slots.release(runner)

    async def _proxy_websocket(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        runner: runners.Runner,
        subpath: str,
        params: dict[str, str],
        app: apps.AppConfig,
    ) -> None:
        query = urllib.parse.urlencode(
            {key: value for key, value in params.items() if key not in STRIPPED_WS_QUERY}
        )
        uri = f"ws://{runner.host}:{runner.port}{subpath}" + (f"?{query}" if query else "")
        request_id = queueing.new_request_id()
        extra = [
            ("x-fal-request-id", request_id),
            ("x-fal-endpoint", queue_worker.endpoint_name(app.app_id, subpath)),
        ]
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        try:
            upstream_ws = await websockets.asyncio.client.connect(
                uri, additional_headers=extra, max_size=None, open_timeout=30, compression=None
            )
        except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as error:
            self.gateway.runners.mark_unready(runner)
            await send(
                {
                    "type": "websocket.close",
                    "code": 1011,
                    "reason": f"runner unavailable: {error}"[:120],
                }
            )
            return
        await send({"type": "websocket.accept"})

        async def client_to_runner() -> None:
            while True:
                incoming = await receive()
                if incoming["type"] == "websocket.receive":
                    data = incoming.get("bytes")
                    await upstream_ws.send(data if data is not None else incoming.get("text", ""))
                elif incoming["type"] == "websocket.disconnect":
                    await upstream_ws.close()
                    return

        async def runner_to_client() -> None:
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                async for frame in upstream_ws:
                    if isinstance(frame, bytes):
                        await send({"type": "websocket.send", "bytes": frame})
                    else:
                        await send({"type": "websocket.send", "text": frame})
            code = upstream_ws.close_code or 1000
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": code})

        tasks = [
            asyncio.ensure_future(client_to_runner()),
            asyncio.ensure_future(runner_to_client()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            await upstream_ws.close()
