"""The gateway's scaling signal of one app, as the operator reads it.

The gateway computes each app's desired runner count (fal's formula plus keep-alive) and
pushes it on its admin listener (``GET /_kubefal/scaling/watch``, server-sent events, one
``event: scaling`` per change; with the gateway's ``--admin-token`` the request carries
``Authorization: Bearer <token>``, see `admin_headers`). This module turns that wire format into
:class:`ScalingSignal` and nothing else: no I/O, so the status computation and the
replicas rule can depend on it and stay pure.

Server-sent events are parsed line by line (:class:`EventStreamParser`) as the HTML
standard describes: ``field: value`` lines accumulate, a blank line dispatches, lines
starting with ``:`` are comments (the gateway's keep-alives).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

SCALING_EVENT: Final = "scaling"
"""The SSE event type carrying one app's signal."""
WATCH_PATH: Final = "/_kubefal/scaling/watch"
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


def _count(data: Mapping[str, Any], field: str) -> int:
    value = data.get(field, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SignalError(f"scaling signal field {field!r} is not a non-negative number: {value!r}")
    return int(value)


def _details(raw: Any) -> tuple[RunnerDetail, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise SignalError("scaling signal field 'runnerDetails' is not a list")
    details: list[RunnerDetail] = []
    for item in raw:
        if not isinstance(item, Mapping):
            raise SignalError("a runnerDetails entry is not an object")
        idle = item.get("idleSeconds", 0.0)
        if isinstance(idle, bool) or not isinstance(idle, int | float):
            raise SignalError(f"runnerDetails idleSeconds is not a number: {idle!r}")
        details.append(
            RunnerDetail(
                pod_name=str(item.get("id", "")),
                pod_ip=str(item.get("ip") or ""),
                in_flight=_count(item, "inFlight"),
                idle_seconds=max(0.0, float(idle)),
                ready=bool(item.get("ready", True)),
            )
        )
    return tuple(details)


def parse_signal(data: str | Mapping[str, Any]) -> ScalingSignal:
    """A signal from the JSON the gateway sends (the SSE data or the per-app endpoint)."""
    if isinstance(data, str):
        try:
            decoded = json.loads(data)
        except ValueError as error:
            raise SignalError(f"scaling event data is not JSON: {error}") from error
    else:
        decoded = data
    if not isinstance(decoded, Mapping):
        raise SignalError("scaling event data is not a JSON object")
    app_id = str(decoded.get("app", ""))
    namespace, _, name = app_id.partition("/")
    if not namespace or not name or "/" in name:
        raise SignalError(f"scaling event names no app as <namespace>/<name>: {app_id!r}")
    return ScalingSignal(
        namespace=namespace,
        name=name,
        queued=_count(decoded, "queued"),
        in_flight=_count(decoded, "inFlight"),
        ready_runners=_count(decoded, "readyRunners"),
        idle_runners=_count(decoded, "idleRunners"),
        runners=_count(decoded, "runners"),
        desired_runners=_count(decoded, "desiredRunners"),
        runner_details=_details(decoded.get("runnerDetails")),
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
