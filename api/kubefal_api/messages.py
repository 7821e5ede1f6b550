"""The messages components send each other over HTTP, as one schema both sides test against.

* `ScalingSignal`: one app's scaling figures, which the gateway pushes on its admin listener
  (``GET`` `naming.SCALING_WATCH_PATH`, server-sent ``event: scaling`` lines, and
  ``/_kubefal/apps/<ns>/<name>/scaling``) and the operator's builtin actuator acts on. The
  operator parses with it; the gateway keeps building the JSON from a dataclass with orjson
  on its hot path (docs/design-decisions.md), and its tests hold that JSON to this model.
* `RunnerAnnouncement`: the body a runner that finished ``setup()`` posts to
  `naming.RUNNER_ANNOUNCE_PATH` on the gateway's admin listener; the gateway parses with it.
  The runner writes it with the stdlib (it stays import-light) and its tests hold it to this
  model.

Field names are the wire's camelCase; Python code uses the snake_case attributes. Validation is
strict (a count is a JSON integer, never a string or a boolean) and unknown fields are ignored, so
either side may add a field before the other reads it.
"""

from __future__ import annotations

from typing import Annotated

import pydantic
from pydantic.alias_generators import to_camel

Count = Annotated[int, pydantic.Field(ge=0)]
"""A non-negative JSON integer."""


class Message(pydantic.BaseModel):
    """Strict, camelCase on the wire, unknown fields ignored, immutable."""

    model_config = pydantic.ConfigDict(
        strict=True,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
    )


class RunnerDetail(Message):
    """What the gateway knows of one runner: whom it serves and since when it idles."""

    id: str = ""
    """The runner's pod name (empty when the gateway does not know it)."""
    ip: str = ""
    in_flight: Count = 0
    idle_seconds: float = 0.0
    """Seconds since its last request ended (0 while busy); negative values read as 0."""
    ready: bool = True

    @pydantic.field_validator("idle_seconds")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        return max(0.0, value)


APP_ID_PATTERN = r"^[^/]+/[^/]+$"
"""``<namespace>/<name>``: `naming.app_id`."""


class ScalingSignal(Message):
    """One app's figures as the gateway computed them (gateway/kubefal_gateway/signals.py)."""

    app: str = pydantic.Field(pattern=APP_ID_PATTERN)
    """``<namespace>/<name>``."""
    queued: Count = 0
    in_flight: Count = 0
    """Requests being served or waiting for a slot (queued jobs in progress included)."""
    ready_runners: Count = 0
    idle_runners: Count = 0
    runners: Count = 0
    desired_runners: Count = 0
    starting_runners: Count = 0
    """Runners seen but never ready yet (pods starting)."""
    policy: str = "fal"
    """The app's ``spec.scaling.policy``."""
    covered_requests: float = 0.0
    """Requests the runners the app has or asked for take before a new one could be ready."""
    mean_request_seconds: float | None = None
    cold_start_seconds: float | None = None
    runner_details: list[RunnerDetail] | None = None
    """Per runner, when the gateway sends it (None: only the counts are known)."""

    @property
    def namespace(self) -> str:
        return self.app.partition("/")[0]

    @property
    def name(self) -> str:
        return self.app.partition("/")[2]


class RunnerAnnouncement(Message):
    """A runner that finished ``setup()``; who it is comes from the TCP peer address, the pod
    name (when the runner knows it) makes the match exact."""

    pod: str = ""
    """The runner's pod name; empty (or left out) when the runner does not know it."""
