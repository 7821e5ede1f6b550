"""fal's queue API: submit, status, result and cancel of queued requests.

`POST /{ns}/{name}[/{subpath}][?fal_webhook=URL]` submits a job to the durable store and answers
with its URLs (built from the Host the client called, never containing the subpath);
`GET .../requests/{id}/status[?logs=1]`, `GET .../requests/{id}` and `PUT .../requests/{id}/cancel`
follow it (docs/fal-compat.md, "fal_client 1.0.3").

A job is bound to its submitter's key (`queueing.Job.owner`): the by-id calls answer only the
callers `queueing.may_act` admits (the submitter's key, a key of the app's namespace, anyone for
a job submitted without a key), and everyone else exactly as for an id nobody submitted
(docs/security.md, "Queued requests, uploads and ids").
"""

from __future__ import annotations

import time

from kubefal_api import apikeys
from kubefal_gateway import (
    apps,
    core,
    errors,
    queue_worker,
    queueing,
    targets,
    webhook_targets,
)
from kubefal_gateway.http_api import (
    ApiPart,
    Receive,
    Scope,
    Send,
    base_url,
    falsey,
    forwarded_headers,
    parse_hint,
    parse_priority,
    parse_start_timeout,
    prepare_json,
    query_params,
    read_body,
    send_json,
    send_prepared,
    split_app_path,
)

IN_PROGRESS_STATUS = prepare_json(202, {"status": "IN_PROGRESS", "logs": None})
"""The status answer of a running job polled without logs (most status polls)."""


class QueueApi(ApiPart):
    """The queue listener's handlers."""

    def __init__(self, gateway: core.Gateway) -> None:
        super().__init__(gateway)
        self.webhook_policy = webhook_targets.TargetPolicy.from_settings(gateway.settings)

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        namespace, name, rest = split_app_path(scope["path"])
        method = scope["method"]
        if rest.startswith("/requests/"):
            parts = rest.split("/")  # ["", "requests", id, ("status"|"cancel")?]
            if 3 <= len(parts) <= 4 and parts[2]:
                suffix = parts[3] if len(parts) == 4 else ""
                app, key = await self._app_and_key(scope, namespace, name, identify=True)
                caller = Caller(app, key)
                request_id = parts[2]
                if suffix == "status" and method == "GET":
                    await self._status(scope, send, caller=caller, request_id=request_id)
                    return
                if suffix == "" and method == "GET":
                    await self._result(send, caller=caller, request_id=request_id)
                    return
                if suffix == "cancel" and method == "PUT":
                    await self._cancel(send, caller=caller, request_id=request_id)
                    return
                if suffix in ("", "status", "cancel"):
                    raise errors.MethodNotAllowed(f"{method} is not allowed on {scope['path']}")
        if method != "POST":
            raise errors.MethodNotAllowed("Submit requests with POST")
        await self._submit(scope, receive, send, namespace=namespace, name=name, subpath=rest)

    async def _submit(
        self, scope: Scope, receive: Receive, send: Send, *, namespace: str, name: str, subpath: str
    ) -> None:
        # What is stored and forwarded comes from the raw path, checked (`subpath` is decoded).
        namespace, name, subpath = self._forward_path(scope)
        query = targets.without_parameter(self._forward_query(scope), "fal_webhook")
        app, key = await self._app_and_key(scope, namespace, name, identify=True)
        # Stored headers count against --max-request-bytes with the body, and have a cap.
        stored_headers = forwarded_headers(scope)
        header_bytes = sum(len(key) + len(value) for key, value in stored_headers)
        if header_bytes > self.settings.max_job_header_bytes:
            raise errors.HeadersTooLarge(
                f"Headers of {header_bytes} bytes exceed the {self.settings.max_job_header_bytes}"
                " bytes a queued request may store"
            )
        priority = parse_priority(scope)
        start_timeout = parse_start_timeout(scope)
        webhook = query_params(scope).get("fal_webhook")
        if webhook is not None:
            try:
                self.webhook_policy.parse(webhook)
            except webhook_targets.InvalidTarget as error:
                raise errors.BadRequest(f"fal_webhook is not an acceptable URL: {error}") from None
        body = await read_body(
            scope, receive, limit=max(0, self.settings.max_request_bytes - header_bytes)
        )
        now = time.time()
        request_id = queueing.new_request_id()
        job = queueing.Job(
            request_id=request_id,
            app_id=app.app_id,
            path=f"{subpath}?{query}" if query else subpath,
            method="POST",
            headers=tuple(
                (key.decode("latin-1"), value.decode("latin-1")) for key, value in stored_headers
            ),
            body=body,
            priority=priority,
            submitted_at=now,
            start_deadline=None if start_timeout is None else now + start_timeout,
            webhook_url=webhook,
            runner_hint=parse_hint(scope),
            owner=None if key is None else key.id,
        )
        try:
            position = await self.gateway.store.submit(
                job, max_queued=self.settings.max_queued_per_app
            )
        except queueing.QueueFullError as full:
            raise errors.QueueFull(
                f"Too many queued requests: {full}; try again later", retry_after=1
            ) from None
        base = f"{base_url(scope)}/{app.app_id}/requests/{request_id}"
        await send_json(
            send,
            200,
            {
                "request_id": request_id,
                "gateway_request_id": request_id,
                "response_url": base,
                "status_url": base + "/status",
                "cancel_url": base + "/cancel",
                "status": "IN_QUEUE",
                "queue_position": position,
            },
        )

    async def _view(
        self, caller: Caller, request_id: str, *, with_logs: bool, with_body: bool
    ) -> queueing.JobView:
        view = await self.gateway.store.view(request_id, with_logs=with_logs, with_body=with_body)
        if view is None or not caller.may_act(view.app_id, view.owner):
            raise errors.NotFound(f"Request {request_id} not found")
        return view

    async def _status(self, scope: Scope, send: Send, *, caller: Caller, request_id: str) -> None:
        with_logs = bool(scope.get("query_string")) and not falsey(query_params(scope).get("logs"))
        worker = self.gateway.worker
        hold = self.gateway.settings.status_hold_seconds
        if worker is not None and not with_logs and hold > 0:
            view = await self._held_view(worker, caller, request_id, hold)
            if view is None:
                await send_prepared(send, IN_PROGRESS_STATUS)
                return
        elif worker is not None and not with_logs and caller.runs_here(worker, request_id):
            # Running here: IN_PROGRESS in the store too (leased by this gateway, not completed).
            await send_prepared(send, IN_PROGRESS_STATUS)
            return
        else:
            view = await self._view(caller, request_id, with_logs=with_logs, with_body=False)
        if view.state is queueing.JobState.IN_PROGRESS and view.logs is None:
            await send_prepared(send, IN_PROGRESS_STATUS)  # most polls: one constant answer
            return
        logs = None if view.logs is None else [line.to_fal() for line in view.logs]
        if view.state is queueing.JobState.IN_QUEUE:
            payload: dict[str, object] = {
                "status": "IN_QUEUE",
                "queue_position": view.queue_position or 0,
            }
            await send_json(send, 202, payload)
        elif view.state is queueing.JobState.IN_PROGRESS:
            await send_json(send, 202, {"status": "IN_PROGRESS", "logs": logs})
        else:
            result = view.result
            await send_json(
                send,
                200,
                {
                    "status": "COMPLETED",
                    "logs": logs,
                    "metrics": dict(result.metrics) if result is not None else {},
                    "error": None if result is None else result.error,
                    "error_type": None if result is None else result.error_type,
                },
            )

    async def _held_view(
        self, worker: queue_worker.QueueWorker, caller: Caller, request_id: str, hold: float
    ) -> queueing.JobView | None:
        """The job's view after holding the poll up to `hold` s for the job to finish, so a job
        finishing meanwhile is answered COMPLETED at once and a client polling every 0.1 s
        (fal_client) sends fewer polls (--status-hold-seconds, docs/design-decisions.md).
        None: still running here (IN_PROGRESS, no store read needed)."""
        waiter = worker.finished_waiter(request_id)
        try:
            if caller.runs_here(worker, request_id):
                # Running here: IN_PROGRESS in the store too (leased here, not completed).
                if not await worker.wait_finished(request_id, waiter, hold):
                    return None
            else:
                view = await self._view(caller, request_id, with_logs=False, with_body=False)
                if view.state is queueing.JobState.COMPLETED:
                    return view
                await worker.wait_finished(request_id, waiter, hold)
        finally:
            worker.drop_waiter(request_id, waiter)
        return await self._view(caller, request_id, with_logs=False, with_body=False)

    async def _result(self, send: Send, *, caller: Caller, request_id: str) -> None:
        view = await self._view(caller, request_id, with_logs=False, with_body=True)
        if view.state is not queueing.JobState.COMPLETED or view.result is None:
            raise errors.StillInProgress("Request is still in progress")
        result = view.result
        headers = [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in result.headers
        ]
        headers.append((b"x-fal-request-id", request_id.encode()))
        if result.error_type is not None:
            headers.append((b"x-fal-error-type", result.error_type.encode()))
        headers.append((b"content-length", str(len(result.body)).encode()))
        await send(
            {"type": "http.response.start", "status": result.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": result.body})

    async def _cancel(self, send: Send, *, caller: Caller, request_id: str) -> None:
        view = await self.gateway.store.view(request_id)
        if view is None or not caller.may_act(view.app_id, view.owner):
            await send_json(send, 404, {"status": "NOT_FOUND", "detail": "Request not found"})
            return
        outcome = await self.gateway.store.cancel(request_id)
        if outcome is queueing.CancelOutcome.NOT_FOUND:
            await send_json(send, 404, {"status": "NOT_FOUND", "detail": "Request not found"})
            return
        status = 202 if outcome is queueing.CancelOutcome.CANCELLATION_REQUESTED else 200
        await send_json(send, status, {"status": outcome.value})


class Caller:
    """Who calls a by-id queue route: the app in the path and the caller's checked key."""

    __slots__ = ("app_id", "key_id", "owns_app")

    def __init__(self, app: apps.AppConfig, key: apikeys.KeyRecord | None) -> None:
        self.app_id = app.app_id
        self.key_id = None if key is None else key.id
        self.owns_app = key is not None and key.allows_namespace(app.namespace)
        """A key of the app's own namespace: the app owner's tenant sees all its requests."""

    def may_act(self, app_id: str, owner: str | None) -> bool:
        """Whether this caller may see or cancel a job of `app_id` submitted by `owner`; a job
        of another app is answered as unknown even to its submitter."""
        return app_id == self.app_id and queueing.may_act(
            owner, self.key_id, caller_owns_app=self.owns_app
        )

    def runs_here(self, worker: queue_worker.QueueWorker, request_id: str) -> bool:
        """The job runs on this gateway and this caller may see it (no store read needed)."""
        running = worker.running_apps.get(request_id)
        return running is not None and self.may_act(*running)
