"""Pure translation between fal's control-plane messages and kubefal's Kubernetes objects.

No I/O here: FalApp and pod dicts (as the API server returns them) and the gateway's per-runner
detail go in, ``isolate_proto`` messages come out; requests come in, FalApp patches come out.

Naming (fal's apps, environments and teams on Kubernetes):

* An app is a FalApp. Its fal *alias* is ``<namespace>/<name>``, the very app id ``fal_client``
  calls (``fal_client.subscribe("<namespace>/<name>", ...)``). Requests may also name an app by
  its bare ``<name>`` when exactly one namespace the key may see holds an app of that name.
* A fal *environment* is a Kubernetes namespace: ``--env team-a`` (``environment_name``)
  selects namespace ``team-a``. Unset, or fal's default ``main``, means every namespace the key
  may see. The SDK appends ``--<env>`` to the alias it sends; that suffix is removed again.
* A fal *team* is the namespace a key belongs to: ``GET /users/current`` (what the fal CLI asks
  when ``--team`` is given with a key) names a key scoped to one namespace by that namespace, so
  ``--team team-a`` with a key of ``team-a`` is that team, and any other team gets fal's own
  "Ignoring explicit team" notice. Keys act for their namespaces whatever ``--team`` says
  (fal's rule for keys).
* The *revision* of an app is its FalApp's ``metadata.uid``.

This module is over 500 lines because it is the one translation between fal's messages and
Kubernetes objects, both ways (aliases, runners with their leases, scaling fields, ids and
environments); every RPC module reads it, and a split would cut pairs of inverse functions.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import annotated_types
import isolate_proto
from google.protobuf import struct_pb2

from kubefal_api import apikeys, naming, v1alpha1
from kubefal_controlplane import errors

DEFAULT_ENVIRONMENT: Final = "main"
ENVIRONMENT_SEPARATOR: Final = "--"
MAX_ALIAS_LENGTH: Final = 253
_NAME = re.compile(v1alpha1.APP_NAME_PATTERN)

AUTH_TO_PROTO: Final = {
    v1alpha1.AuthMode.PRIVATE: isolate_proto.ApplicationAuthMode.PRIVATE,
    v1alpha1.AuthMode.PUBLIC: isolate_proto.ApplicationAuthMode.PUBLIC,
    v1alpha1.AuthMode.SHARED: isolate_proto.ApplicationAuthMode.SHARED,
}


@dataclasses.dataclass(frozen=True)
class AppRef:
    """An app as a request names it: the namespace, when the request says it, and the name."""

    namespace: str | None
    name: str

    def __str__(self) -> str:
        return self.name if self.namespace is None else f"{self.namespace}/{self.name}"


def environment_namespace(environment_name: str | None, *, field: str) -> str | None:
    """The namespace an ``environment_name`` selects (None: every namespace the key sees)."""
    if not environment_name or environment_name == DEFAULT_ENVIRONMENT:
        return None
    if not apikeys.is_valid_namespace(environment_name):
        raise errors.invalid_argument(
            field,
            f"{environment_name!r} is not a namespace name: kubefal maps fal environments to "
            "Kubernetes namespaces (lowercase letters, digits and '-')",
        )
    return environment_name


def parse_app_ref(alias: str, environment_name: str | None, *, field: str) -> AppRef:
    """``ns/name``, ``name``, or either with the SDK's ``--<env>`` suffix, checked."""
    if not alias:
        raise errors.invalid_argument(field, "the app name is empty")
    if len(alias) > MAX_ALIAS_LENGTH:
        raise errors.invalid_argument(field, f"longer than {MAX_ALIAS_LENGTH} characters")
    env_namespace = environment_namespace(environment_name, field="environment_name")
    if env_namespace is not None:
        suffix = ENVIRONMENT_SEPARATOR + env_namespace
        if alias.endswith(suffix):
            alias = alias[: -len(suffix)]
    namespace, slash, name = alias.rpartition("/")
    if not slash:
        namespace, name = "", alias
    if slash and not apikeys.is_valid_namespace(namespace):
        raise errors.invalid_argument(field, f"{namespace!r} is not a namespace name")
    if len(name) > v1alpha1.MAX_APP_NAME_LENGTH or not _NAME.fullmatch(name):
        raise errors.invalid_argument(
            field,
            f"{name!r} is not an app name (a DNS-1035 label: lowercase letters, digits and '-', "
            "starting with a letter); name an app as <namespace>/<name> or <name>",
        )
    if slash and env_namespace is not None and namespace != env_namespace:
        raise errors.invalid_argument(
            field, f"names namespace {namespace!r} but environment_name is {env_namespace!r}"
        )
    return AppRef(namespace=namespace or env_namespace, name=name)


def timestamp(text: str | None) -> datetime.datetime | None:
    """An RFC 3339 time as Kubernetes writes it (``...Z``); None when absent or malformed."""
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def app_id(app: Mapping[str, Any]) -> str:
    meta = app.get("metadata") or {}
    return naming.app_id(str(meta.get("namespace", "")), str(meta.get("name", "")))


def revision(app: Mapping[str, Any]) -> str:
    return str((app.get("metadata") or {}).get("uid", ""))


@dataclasses.dataclass(frozen=True)
class Lease:
    """A request a runner works on, as the gateway reports it (fal's runner lease)."""

    request_id: str
    leased_at_epoch: float
    caller_id: str | None
    """The caller's API key id (fal's ``caller_user_id``); None without a key."""

    def to_fal(self) -> dict[str, Any]:
        """The entry of ``RunnerInfo.external_metadata["leases"]`` the fal CLI reads."""
        return {
            "request_id": self.request_id,
            "leased_at_epoch": self.leased_at_epoch,
            "caller_user_id": self.caller_id or "",
        }


@dataclasses.dataclass(frozen=True)
class RunnerDetail:
    """What the gateway knows of one runner (its admin listener's ``/_kubefal/runners``)."""

    in_flight: int
    idle_seconds: float
    leases: tuple[Lease, ...] = ()


MAX_LEASES_PER_RUNNER: Final = 1000
"""More leases than this on one runner are not shown (maxMultiplexing is at most 1000)."""


def _parse_leases(raw: Any) -> tuple[Lease, ...]:
    if not isinstance(raw, list):
        return ()
    leases = []
    for entry in raw[:MAX_LEASES_PER_RUNNER]:
        if not isinstance(entry, Mapping):
            continue
        request_id, leased_at, caller = (
            entry.get("requestId"),
            entry.get("leasedAtEpoch"),
            entry.get("callerId"),
        )
        if (
            not isinstance(request_id, str)
            or not request_id
            or isinstance(leased_at, bool)
            or not isinstance(leased_at, int | float)
            or not (caller is None or isinstance(caller, str))
        ):
            continue
        leases.append(
            Lease(request_id=request_id[:200], leased_at_epoch=float(leased_at), caller_id=caller)
        )
    return tuple(leases)


def parse_runners(document: Any) -> dict[str, dict[str, RunnerDetail]]:
    """App id -> pod name -> detail, from the gateway's ``/_kubefal/runners``; bad entries are
    skipped."""
    by_app: dict[str, dict[str, RunnerDetail]] = {}
    if not isinstance(document, Mapping) or not isinstance(document.get("apps"), list):
        return by_app
    for entry in document["apps"]:
        if isinstance(entry, Mapping) and isinstance(entry.get("app"), str):
            by_app[entry["app"]] = parse_runner_details({"runnerDetails": entry.get("runners")})
    return by_app


def parse_runner_details(document: Any) -> dict[str, RunnerDetail]:
    """Pod name -> detail, from one app's ``runnerDetails`` list; bad entries are skipped."""
    details: dict[str, RunnerDetail] = {}
    if not isinstance(document, Mapping):
        return details
    entries = document.get("runnerDetails")
    if not isinstance(entries, list):
        return details
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        pod_name, in_flight, idle = (
            entry.get("id"),
            entry.get("inFlight", 0),
            entry.get("idleSeconds", 0),
        )
        if (
            not isinstance(pod_name, str)
            or isinstance(in_flight, bool)
            or not isinstance(in_flight, int)
            or in_flight < 0
            or isinstance(idle, bool)
            or not isinstance(idle, int | float)
        ):
            continue
        details[pod_name] = RunnerDetail(
            in_flight=in_flight,
            idle_seconds=max(0.0, float(idle)),
            leases=_parse_leases(entry.get("leases")),
        )
    return details


# ---- runners ---------------------------------------------------------------------------------

State = isolate_proto.RunnerInfo.State


def _terminating(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _container_statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return list(status.get("initContainerStatuses") or []) + list(
        status.get("containerStatuses") or []
    )


def _ready(pod: Mapping[str, Any]) -> bool:
    return any(
        condition.get("type") == "Ready" and condition.get("status") == "True"
        for condition in (pod.get("status") or {}).get("conditions") or []
    )


def runner_state(
    pod: Mapping[str, Any], detail: RunnerDetail | None
) -> isolate_proto.RunnerInfo.State.ValueType:
    """fal's runner state of a pod: from the pod, and the gateway for busy versus idle."""
    phase = (pod.get("status") or {}).get("phase")
    if _terminating(pod):
        return State.DRAINING if detail is not None and detail.in_flight > 0 else State.TERMINATING
    if phase in ("Succeeded", "Failed"):
        return State.TERMINATED
    waiting = [
        ((container.get("state") or {}).get("waiting") or {}).get("reason")
        for container in _container_statuses(pod)
    ]
    if "CrashLoopBackOff" in waiting:
        return State.FAILURE_DELAY
    if not (pod.get("spec") or {}).get("nodeName") or phase == "Pending":
        if any(reason in ("ErrImagePull", "ImagePullBackOff") for reason in waiting):
            return State.DOCKER_PULL
        return State.PENDING
    if not _ready(pod):
        return State.SETUP
    if detail is not None and detail.in_flight == 0:
        return State.IDLE
    return State.RUNNING


def pod_started(pod: Mapping[str, Any]) -> datetime.datetime | None:
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    return timestamp(status.get("startTime")) or timestamp(meta.get("creationTimestamp"))


def runner_info(
    pod: Mapping[str, Any],
    app: Mapping[str, Any] | None,
    detail: RunnerDetail | None,
    *,
    now: datetime.datetime,
    no_gateway: bool = True,
) -> isolate_proto.RunnerInfo:
    """A runner pod as fal's ``RunnerInfo``. ``no_gateway``: the gateway's view is unknown
    (no gateway URL, or it did not answer), so a live pod counts as present in its group."""
    meta = pod.get("metadata") or {}
    namespace = str(meta.get("namespace", ""))
    app_name = str((meta.get("labels") or {}).get(naming.LABEL_APP, ""))
    state = runner_state(pod, detail)
    started = pod_started(pod)
    uptime = max(0.0, (now - started).total_seconds()) if started else 0.0
    spec = (app or {}).get("spec") or {}
    status = (app or {}).get("status") or {}
    annotated = str((meta.get("annotations") or {}).get(naming.ANNOTATION_MACHINE_TYPES, ""))
    machine_types = [m for m in annotated.split(",") if m] or list(spec.get("machineTypes") or [])
    machine_type = str(status.get("machineType") or (machine_types[0] if machine_types else ""))
    keep_alive = int(((spec.get("scaling") or {}).get("keepAlive")) or 0)
    countdown: int | None = None
    if state == State.IDLE and detail is not None:
        countdown = max(0, int(keep_alive - detail.idle_seconds))
    metadata = struct_pb2.Struct()
    metadata.update(
        {
            "leases": [lease.to_fal() for lease in detail.leases] if detail is not None else [],
            # fal shows a runner lost from its group in red: here a terminating pod, or a
            # Ready pod the gateway (when it answered) does not route to.
            "present_in_group": not _terminating(pod)
            and (no_gateway or detail is not None or not _ready(pod)),
            "namespace": namespace,
            "pod": str(meta.get("name", "")),
            "node": str((pod.get("spec") or {}).get("nodeName") or ""),
        }
    )
    message = isolate_proto.RunnerInfo(
        runner_id=str(meta.get("name", "")),
        in_flight_requests=detail.in_flight if detail is not None else 0,
        uptime=uptime,
        revision=revision(app) if app is not None else "",
        alias=naming.app_id(namespace, app_name),
        external_metadata=metadata,
        state=state,
        replacement=isolate_proto.RunnerInfo.ReplaceState.NO_REPLACE,
        machine_type=machine_type,
    )
    if countdown is not None:
        message.expiration_countdown = countdown
    return message


def runners_since(request: Any) -> datetime.datetime | None:
    """A runner listing's ``start_time`` (the SDK's ``since=``) in UTC; None when unset. A
    time outside what a protobuf Timestamp may hold (years 1-9999, nanos below a second) is
    INVALID_ARGUMENT naming the field."""
    if not request.HasField("start_time"):
        return None
    try:
        started: datetime.datetime = isolate_proto.datetime_from_timestamp(request.start_time)
        return started.astimezone(datetime.UTC)
    except (ValueError, OverflowError):
        raise errors.invalid_argument(
            "start_time", "not a valid time (years 1-9999, nanos 0-999999999)"
        ) from None


def runner_selected(
    pod: Mapping[str, Any], *, since: datetime.datetime | None, list_pending: bool
) -> bool:
    """``since``: runners started at or after it (the SDK's ``since=``); pending ones optional."""
    if since is not None:
        started = timestamp((pod.get("metadata") or {}).get("creationTimestamp"))
        if started is None or started < since:
            return False
    return list_pending or runner_state(pod, None) != State.PENDING


# ---- apps ------------------------------------------------------------------------------------


def alias_info(
    app: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
) -> isolate_proto.AliasInfo:
    """A FalApp and its runner pods as fal's ``AliasInfo`` (defaults filled from the model)."""
    parsed = v1alpha1.FalApp.model_validate(
        {"spec": app.get("spec") or {}, "status": app.get("status")}
    )
    spec, scaling = parsed.spec, parsed.spec.scaling
    namespace = str((app.get("metadata") or {}).get("namespace", ""))
    active = sum(
        1
        for pod in pods
        if not _terminating(pod) and runner_state(pod, None) not in (State.TERMINATED, State.DEAD)
    )
    rolling = parsed.status is not None and parsed.status.phase == v1alpha1.Phase.PROGRESSING
    return isolate_proto.AliasInfo(
        alias=app_id(app),
        revision=revision(app),
        auth_mode=AUTH_TO_PROTO[spec.auth],
        max_concurrency=scaling.max_concurrency,
        max_multiplexing=scaling.max_multiplexing,
        keep_alive=scaling.keep_alive,
        active_runners=active,
        min_concurrency=scaling.min_concurrency,
        machine_types=list(spec.machine_types),
        request_timeout=spec.request_timeout,
        startup_timeout=spec.startup_timeout,
        valid_regions=list(spec.regions),
        concurrency_buffer=scaling.concurrency_buffer,
        concurrency_buffer_perc=scaling.concurrency_buffer_perc,
        scaling_delay_seconds=scaling.scaling_delay,
        environment_name=namespace,
        is_rolling=rolling,
    )


def application_info(
    app: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
) -> isolate_proto.ApplicationInfo:
    """A FalApp as fal's ``ApplicationInfo``: kubefal keeps one revision per app, the live one."""
    alias = alias_info(app, pods)
    info = isolate_proto.ApplicationInfo(
        application_id=alias.revision,
        max_concurrency=alias.max_concurrency,
        max_multiplexing=alias.max_multiplexing,
        keep_alive=alias.keep_alive,
        active_runners=alias.active_runners,
        min_concurrency=alias.min_concurrency,
        machine_types=list(alias.machine_types),
        request_timeout=alias.request_timeout,
        startup_timeout=alias.startup_timeout,
        valid_regions=list(alias.valid_regions),
        concurrency_buffer=alias.concurrency_buffer,
        concurrency_buffer_perc=alias.concurrency_buffer_perc,
        scaling_delay_seconds=alias.scaling_delay_seconds,
        environment_name=alias.environment_name,
    )
    created = timestamp((app.get("metadata") or {}).get("creationTimestamp"))
    if created is not None:
        info.created_at.FromDatetime(created)
    return info


# request field -> (FalApp spec path, pydantic model, model field)
SCALE_FIELDS: Final[dict[str, tuple[tuple[str, ...], type[Any], str]]] = {
    "keep_alive": (("scaling", "keepAlive"), v1alpha1.ScalingSpec, "keep_alive"),
    "max_multiplexing": (("scaling", "maxMultiplexing"), v1alpha1.ScalingSpec, "max_multiplexing"),
    "max_concurrency": (("scaling", "maxConcurrency"), v1alpha1.ScalingSpec, "max_concurrency"),
    "min_concurrency": (("scaling", "minConcurrency"), v1alpha1.ScalingSpec, "min_concurrency"),
    "concurrency_buffer": (
        ("scaling", "concurrencyBuffer"),
        v1alpha1.ScalingSpec,
        "concurrency_buffer",
    ),
    "concurrency_buffer_perc": (
        ("scaling", "concurrencyBufferPerc"),
        v1alpha1.ScalingSpec,
        "concurrency_buffer_perc",
    ),
    "scaling_delay_seconds": (("scaling", "scalingDelay"), v1alpha1.ScalingSpec, "scaling_delay"),
    "request_timeout": (("requestTimeout",), v1alpha1.FalAppSpec, "request_timeout"),
    "startup_timeout": (("startupTimeout",), v1alpha1.FalAppSpec, "startup_timeout"),
}


def _bounds(model: type[Any], field: str) -> tuple[int | None, int | None]:
    low: int | None = None
    high: int | None = None
    for constraint in model.model_fields[field].metadata:
        if isinstance(constraint, annotated_types.Ge):
            low = int(constraint.ge)  # type: ignore[call-overload]
        elif isinstance(constraint, annotated_types.Le):
            high = int(constraint.le)  # type: ignore[call-overload]
    return low, high


def scale_patch(
    request: isolate_proto.UpdateApplicationRequest, current_spec: Mapping[str, Any]
) -> dict[str, Any]:
    """The FalApp spec merge patch for an ``UpdateApplication`` (``apps scale``).

    Only fields the request sets are in the patch; repeated fields count as set when non-empty
    (proto3 cannot tell an empty list from an omitted one, and fal's CLI sends none for
    omitted options). Every value is checked against the FalApp schema, naming the request
    field.
    """
    spec: dict[str, Any] = {}
    for field, (path, model, model_field) in SCALE_FIELDS.items():
        if not request.HasField(field):  # type: ignore[arg-type]
            continue
        value = int(getattr(request, field))
        low, high = _bounds(model, model_field)
        if (low is not None and value < low) or (high is not None and value > high):
            raise errors.invalid_argument(
                field, f"{value} is out of range ({low}-{high}) for FalApp spec.{'.'.join(path)}"
            )
        target = spec
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    if request.HasField("request_start_timeout"):
        raise errors.invalid_argument(
            "request_start_timeout",
            "kubefal has no app-level queue-wait default; send fal_client's start_timeout "
            "per request instead",
        )
    if request.machine_types:
        machine_types = list(request.machine_types)
        try:
            v1alpha1.FalAppSpec.model_validate({**current_spec, "machineTypes": machine_types})
        except ValueError as error:
            raise errors.invalid_argument("machine_types", _first_error(error)) from error
        spec["machineTypes"] = machine_types
    if request.valid_regions:
        regions = list(request.valid_regions)
        if len(set(regions)) != len(regions) or any(not r or len(r) > 63 for r in regions):
            raise errors.invalid_argument(
                "valid_regions", "regions must be distinct, each 1-63 characters"
            )
        spec["regions"] = regions
    if not spec:
        raise errors.invalid_argument(
            "application_name", "no scaling field is set; nothing to update"
        )
    merged = _merge(dict(current_spec), spec)
    try:
        v1alpha1.FalAppSpec.model_validate(merged)
    except ValueError as error:
        raise errors.invalid_argument(_request_field(error), _first_error(error)) from error
    return spec


def _merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            base[key] = _merge(dict(base[key]), value)
        else:
            base[key] = value
    return base


def _first_error(error: ValueError) -> str:
    errors_method = getattr(error, "errors", None)
    if callable(errors_method):
        entries = errors_method()
        if entries:
            return str(entries[0].get("msg", error))
    return str(error)


def _request_field(error: ValueError) -> str:
    text = str(error)
    if "minConcurrency" in text or "min_concurrency" in text:
        return "min_concurrency"
    return "application_name"
