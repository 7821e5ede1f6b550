"""The gateway's admin API: probes, metrics, runner announcements and the scaling signals.

Served on the admin listener only (`--admin-port`, never exposed like the queue and run
listeners; `--admin-token` guards what `admin_auth` says): `/healthz`, `/readyz`, `/metrics`,
`POST /_kubefal/runners/ready` (a runner that finished setup), `/_kubefal/scaling/watch` (the
operator's server-sent event stream of scaling signals), `/_kubefal/apps/{ns}/{name}/scaling` and
`/_kubefal/runners` (every runner with its in-flight requests, for the control plane's
`fal runners list`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pydantic

from kubefal_api import apikeys, messages, naming
from kubefal_gateway import (
    admin_auth,
    discovery,
    errors,
    queueing,
)
from kubefal_gateway.http_api import (
    SSE_CONTENT_TYPE,
    ApiPart,
    Receive,
    Scope,
    Send,
    client_host,
    query_params,
    read_body,
    send_json,
    until_disconnect,
)

ANNOUNCE_MAX_BYTES = 1024
"""A runner's announcement is `{"pod": "<name>"}`: anything longer is refused (413)."""


RUNNERS_PATH = "/_kubefal/runners"
"""Every runner of the apps asked for, with its leases: ``?app=<ns>/<name>`` for one app,
``?namespaces=a,b`` for the apps of those namespaces, neither for all."""
MAX_NAMESPACES_PER_QUERY = 256


class AdminApi(ApiPart):
    """The admin listener's handlers."""

    def _runners(self, query: dict[str, str]) -> dict[str, object]:
        """``{"apps": [{"app", "runners": [{"id", "inFlight", "idleSeconds", "ready",
        "leases": [{"requestId", "leasedAtEpoch", "callerId"}]}]}]}``."""
        registry = self.gateway.registry
        if "app" in query:
            app = registry.get(query["app"])
            if app is None:
                raise errors.NotFound(f"App {query['app'][:300]!r} not found")
            app_ids = [app.app_id]
        else:
            app_ids = sorted(registry.apps)
            if query.get("namespaces"):
                wanted = query["namespaces"].split(",")
                if len(wanted) > MAX_NAMESPACES_PER_QUERY or not all(
                    apikeys.is_valid_namespace(namespace) for namespace in wanted
                ):
                    raise errors.BadRequest(
                        f"namespaces must be at most {MAX_NAMESPACES_PER_QUERY} comma-separated "
                        "namespace names"
                    )
                namespaces = set(wanted)
                app_ids = [i for i in app_ids if i.split("/", 1)[0] in namespaces]
        table, forwarder = self.gateway.runners, self.gateway.forwarder
        now = time.monotonic()
        listed: list[dict[str, object]] = []
        for app_id in app_ids:
            leases = forwarder.leases_by_runner(app_id)
            entries: list[dict[str, object]] = []
            for runner in table.runners(app_id).values():
                busy = runner.in_flight + runner.elsewhere
                entries.append(
                    {
                        # the pod name (a static runner: its address), as in runnerDetails
                        "id": runner.runner_id.rsplit("/", 1)[-1],
                        "inFlight": busy,
                        "idleSeconds": 0.0 if busy else round(now - runner.last_request_end, 1),
                        "ready": runner.ready,
                        "leases": [
                            {
                                "requestId": lease.request_id,
                                "leasedAtEpoch": round(lease.leased_at, 3),
                                "callerId": lease.caller,
                            }
                            for lease in leases.get(runner.runner_id, ())
                        ],
                    }
                )
            listed.append({"app": app_id, "runners": entries})
        return {"apps": listed}

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        gateway = self.gateway
        if admin_auth.needs_token(
            path,
            token=self.settings.admin_token,
            protect_metrics=self.settings.admin_token_metrics,
        ):
            admin_auth.check(scope["headers"], token=self.settings.admin_token)
        if path == "/healthz":
            await send_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            ready = gateway.ready
            store_error = await gateway.store_unavailable() if ready else None
            body: dict[str, object] = {"ready": ready and store_error is None}
            if store_error is not None:
                body["detail"] = f"Queue store unavailable: {store_error}"
            await send_json(send, 200 if body["ready"] else 503, body)
        elif path == "/metrics":
            try:
                await gateway.signals.refresh_all()
            except queueing.QueueError:
                # Still served: the metrics are how an operator learns the store is down
                # (docs/operations.md, KubefalStoreErrors); the queue gauges keep their last values.
                gateway.metrics.store_errors.labels("metrics").inc()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": gateway.metrics.render()})
        elif path == admin_auth.ANNOUNCE_PATH:
            await self._announce(scope, receive, send)
        elif path == naming.SCALING_WATCH_PATH:
            await self._scaling_watch(scope, receive, send)
        elif path == RUNNERS_PATH:
            await send_json(send, 200, self._runners(query_params(scope)))
        elif path.startswith("/_kubefal/apps/") and path.endswith("/scaling"):
            parts = path.split("/")  # ["", "_kubefal", "apps", ns, name, "scaling"]
            if len(parts) != 6:
                raise errors.NotFound("Use /_kubefal/apps/<namespace>/<name>/scaling")
            app = gateway.registry.get(f"{parts[3]}/{parts[4]}")
            if app is None:
                raise errors.NotFound(f"App {parts[3]}/{parts[4]} not found")
            signal = await gateway.signals.compute(app)
            await send_json(send, 200, signal.to_json())
        else:
            raise errors.NotFound(f"Path {path} not found")

    async def _announce(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /_kubefal/runners/ready` from a runner that finished setup(), optionally with
        `{"pod": "<its pod name>"}`: who it is comes from the TCP peer address (discovery.py)."""
        if scope["method"] != "POST":
            raise errors.MethodNotAllowed("Announce a runner with POST")
        body = await read_body(scope, receive, limit=ANNOUNCE_MAX_BYTES)
        pod_name: str | None = None
        if body:
            try:
                announcement = messages.RunnerAnnouncement.model_validate_json(body)
            except pydantic.ValidationError:
                raise errors.BadRequest('The announcement must be {"pod": "<pod name>"}') from None
            pod_name = announcement.pod or None
        kube = self.gateway.discovery
        peer = client_host(scope)
        if kube is None or peer is None:
            raise errors.NotFound("This gateway does not discover runners from Kubernetes")
        try:
            app_id, runner_id = kube.announce(peer, pod_name=pod_name)
        except discovery.NotAnnounceable as refused:
            raise errors.Forbidden(str(refused)) from None
        await send_json(send, 200, {"app": app_id, "runner": runner_id, "ready": True})

    async def _scaling_watch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Server-sent events: every app's signal at once, then each change as it happens."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", SSE_CONTENT_TYPE),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        subscription = self.gateway.signals.subscribe()
        disconnected = asyncio.ensure_future(until_disconnect(receive))
        try:
            for app in list(self.gateway.registry.apps.values()):
                signal = await self.gateway.signals.compute(app)
                await send(
                    {"type": "http.response.body", "body": signal.to_sse(), "more_body": True}
                )
            while not disconnected.done():
                getter = asyncio.ensure_future(subscription.get())
                done, _ = await asyncio.wait(
                    {getter, disconnected}, timeout=15.0, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": getter.result().to_sse(),
                            "more_body": True,
                        }
                    )
                else:
                    getter.cancel()
                    if not done:
                        await send(
                            {
                                "type": "http.response.body",
                                "body": b": keep-alive\n\n",
                                "more_body": True,
                            }
                        )
        finally:
            disconnected.cancel()
            self.gateway.signals.unsubscribe(subscription)
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
