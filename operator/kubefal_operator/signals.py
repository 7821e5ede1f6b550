"""The gateway's scaling signal of one app, as the operator reads it.

The gateway computes each app's desired runner count (fal's formula plus keep-alive) and
pushes it on its admin listener (``GET /_kubefal/scaling/watch``, server-sent events, one
``event: scaling`` per change; with the gateway's ``--admin-token`` the request carries
``Authorization: Bearer <token>``, see `admin_headers`). This module turns that wire format
(validated by its schema, `kubefal_api.messages.ScalingSignal`) into :class:`ScalingSignal`, the
operator's view of it, and nothing else: no I/O, so the status computation and the replicas rule
can depend on it and stay pure.

Server-sent events are parsed line by line (:class:`EventStreamParser`) as the HTML
standard describes: ``field: value`` lines accumulate, a blank line dispatches, lines
starting with ``:`` are comments (the gateway's keep-alives).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

import pydantic

from kubefal_api import messages, naming

SCALING_EVENT: Final = "scaling"
"""The SSE event type carrying one app's signal."""
WATCH_PATH: Final = naming.SCALING_WATCH_PATH
ADMIN_TOKEN_ENV: Final = "KUBEFAL_GATEWAY_ADMIN_TOKEN"
"""The environment variable holding the gateway's admin token (its ``--admin-token``)."""


def admin_headers(token: str | None) -> dict[str, str]:
    """The request headers that authenticate to the gateway's admin listener."""
    return {"Authorization": f"Bearer {token}"} if token else {}


class SignalError(ValueError):
    """A scaling event whose data is not a valid signal."""


@dataclasses.dataclass(frozen=True)
class RunnerDetail:
    """What the gateway knows of one runner: whom it serves and since when it idles."""

    pod_name: str
    pod_ip: str
    in_flight: int
    idle_seconds: float
    ready: bool

    @property
    def busy(self) -> bool:
        return self.in_flight > 0


@dataclasses.dataclass(frozen=True)
class ScalingSignal:
    """One app's numbers as the gateway last reported them."""

    namespace: str
    name: str
    queued: int
    in_flight: int
    ready_runners: int
    idle_runners: int
    runners: int
    desired_runners: int
    runner_details: tuple[RunnerDetail, ...] | None = None
    """Per-runner detail, when the gateway sends it (None: only the counts are known)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def detail_of(self, *, pod_name: str, pod_ip: str | None) -> RunnerDetail | None:
        """The gateway's view of a pod, matched by name, else by IP."""
        for detail in self.runner_details or ():
            if detail.pod_name == pod_name or (pod_ip and detail.pod_ip == pod_ip):
                return detail
        return None


def parse_signal(data: str | bytes | Mapping[str, Any]) -> ScalingSignal:
    """A signal from the JSON the gateway sends (the SSE data or the per-app endpoint)."""
    try:
        if isinstance(data, str | bytes):
            message = messages.ScalingSignal.model_validate_json(data)
        else:
            message = messages.ScalingSignal.model_validate(data)
    except pydantic.ValidationError as error:
        raise SignalError(f"not a scaling signal: {error}") from error
    details = message.runner_details
    return ScalingSignal(
        namespace=message.namespace,
        name=message.name,
        queued=message.queued,
        in_flight=message.in_flight,
        ready_runners=message.ready_runners,
        idle_runners=message.idle_runners,
        runners=message.runners,
        desired_runners=message.desired_runners,
        runner_details=None
        if details is None
        else tuple(
            RunnerDetail(
                pod_name=detail.id,
                pod_ip=detail.ip,
                in_flight=detail.in_flight,
                idle_seconds=detail.idle_seconds,
                ready=detail.ready,
            )
            for detail in details
        ),
    )


@dataclasses.dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str


class EventStreamParser:
    """Incremental ``text/event-stream`` parser: feed lines, get complete events."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        """One line without its terminator; returns an event when ``line`` completes one."""
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = ServerSentEvent(event=self._event or "message", data="\n".join(self._data))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None
