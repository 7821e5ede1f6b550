"""What the gateway knows about each app: auth mode, multiplexing, timeouts, retry policy, scaling.

Apps come from FalApp objects (group `kubefal.io`, version `v1alpha1`) watched through the
Kubernetes API, or from the static file of local mode (settings.py). Both produce `AppConfig`
values held in one `AppRegistry`, which the routes read on every request (a dict lookup) and the
dispatcher subscribes to.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping
from typing import Any

import pydantic

from kubefal_api import v1alpha1

RETRY_CONDITIONS = frozenset({"timeout", "server_error", "connection_error"})


class AuthMode(enum.Enum):
    PRIVATE = "private"
    SHARED = "shared"
    PUBLIC = "public"


@dataclasses.dataclass(frozen=True)
class AppConfig:
    """One app as the gateway serves it."""

    namespace: str
    name: str
    auth: AuthMode = AuthMode.PRIVATE
    scaling: v1alpha1.ScalingSpec = dataclasses.field(default_factory=v1alpha1.ScalingSpec)
    request_timeout: float | None = None
    """Seconds a runner may spend on one request (None: unlimited)."""
    skip_retry_conditions: frozenset[str] = frozenset()
    runner_urls: tuple[str, ...] = ()
    """Static runner base URLs (local mode only)."""

    @property
    def app_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def max_multiplexing(self) -> int:
        return self.scaling.max_multiplexing


class InvalidAppConfig(ValueError):
    """An app entry of the static file or a FalApp spec the gateway cannot use."""


def _number(value: Any, field: str, *, minimum: float = 0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidAppConfig(f"{field} must be a number, got {value!r}")
    if value < minimum:
        raise InvalidAppConfig(f"{field} must be at least {minimum}, got {value!r}")
    return float(value)


def _scaling(raw: Mapping[str, Any] | None, max_multiplexing: Any = None) -> v1alpha1.ScalingSpec:
    fields = dict(raw or {})
    if max_multiplexing is not None and "maxMultiplexing" not in fields:
        fields["maxMultiplexing"] = max_multiplexing
    try:
        return v1alpha1.ScalingSpec.model_validate(fields)
    except pydantic.ValidationError as error:
        raise InvalidAppConfig(f"invalid scaling: {error}") from error


def _common(raw: Mapping[str, Any], *, namespace: str, name: str) -> dict[str, Any]:
    auth_raw = raw.get("auth") or "private"
    try:
        auth = AuthMode(str(auth_raw))
    except ValueError as error:
        raise InvalidAppConfig(
            f"auth must be private, shared or public, got {auth_raw!r}"
        ) from error
    skip = frozenset(str(item) for item in raw.get("skipRetryConditions") or ())
    unknown = skip - RETRY_CONDITIONS
    if unknown:
        raise InvalidAppConfig(f"unknown skipRetryConditions: {sorted(unknown)}")
    timeout = raw.get("requestTimeout")
    return {
        "namespace": namespace,
        "name": name,
        "auth": auth,
        "scaling": _scaling(raw.get("scaling"), raw.get("maxMultiplexing")),
        "request_timeout": None if timeout is None else _number(timeout, "requestTimeout"),
        "skip_retry_conditions": skip,
    }


def from_static_entry(raw: Mapping[str, Any]) -> AppConfig:
    """One entry of the static file's `apps` list."""
    app_id = str(raw.get("id", ""))
    namespace, _, name = app_id.partition("/")
    if not namespace or not name or "/" in name:
        raise InvalidAppConfig(f"app id must be '<namespace>/<name>', got {app_id!r}")
    runners = tuple(str(url).rstrip("/") for url in raw.get("runners") or ())
    return AppConfig(**_common(raw, namespace=namespace, name=name), runner_urls=runners)


def from_falapp(body: Mapping[str, Any]) -> AppConfig:
    """A FalApp object (as returned by the Kubernetes API) → AppConfig, via the shared models."""
    metadata = body.get("metadata") or {}
    try:
        spec = v1alpha1.FalAppSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError as error:
        raise InvalidAppConfig(str(error)) from error
    return AppConfig(
        namespace=str(metadata["namespace"]),
        name=str(metadata["name"]),
        auth=AuthMode(spec.auth.value),
        scaling=spec.scaling,
        request_timeout=float(spec.request_timeout),
        skip_retry_conditions=frozenset(
            condition.value for condition in spec.skip_retry_conditions
        ),
    )


Listener = Callable[[AppConfig | None, str], None]


class AppRegistry:
    """Current app configurations by id; notifies listeners on change (config None = deleted)."""

    def __init__(self) -> None:
        self.apps: dict[str, AppConfig] = {}
        self.listeners: list[Listener] = []

    def get(self, app_id: str) -> AppConfig | None:
        return self.apps.get(app_id)

    def put(self, config: AppConfig) -> None:
        if self.apps.get(config.app_id) == config:
            return
        self.apps[config.app_id] = config
        for listener in self.listeners:
            listener(config, config.app_id)

    def remove(self, app_id: str) -> None:
        if self.apps.pop(app_id, None) is not None:
            for listener in self.listeners:
                listener(None, app_id)
