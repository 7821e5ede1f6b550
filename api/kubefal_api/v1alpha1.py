"""The FalApp resource (``kubefal.io/v1alpha1``) as pydantic models.

These models are the single source of truth for the FalApp API: the CRD in ``crds/`` is
generated from them (``python -m kubefal_api.crds crds/``), the operator parses live objects
with them, and the CLI renders manifests with them. Python attributes are snake_case; the
Kubernetes names are their camelCase aliases. Each attribute's docstring becomes the field's
description, which is what ``kubectl explain falapp.spec...`` prints.

Defaults equal the fal SDK's (``fal.app.wrap_app(MyApp).options.host`` for an app that sets
nothing, fal 1.83.0). Where the SDK leaves a value to the fal platform (``None``), kubefal picks
the documented default named by a ``DEFAULT_*`` constant below.

This module is over 500 lines on purpose: it is one API version's whole schema, as Kubernetes
keeps a version's types in one file, and most of its lines are the field docstrings that become
the CRD's descriptions; the models reference each other, and the CRD generator and the golden
test read them as one.
"""

from __future__ import annotations

import datetime
import enum
import re
from typing import Annotated, Any, Final

import pydantic
import pydantic.alias_generators

GROUP: Final = "kubefal.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "FalApp"
LIST_KIND: Final = "FalAppList"
PLURAL: Final = "falapps"
SINGULAR: Final = "falapp"
SHORT_NAMES: Final[tuple[str, ...]] = ("falapp", "fa")
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# Defaults. "SDK" ones are what fal 1.83.0 applies to an app that sets nothing; the others are
# None in the SDK (the fal platform decides), so kubefal documents its own choice.
DEFAULT_MACHINE_TYPE: Final = "S"
"""SDK: ``fal.App.machine_type = "S"``."""
DEFAULT_KEEP_ALIVE_SECONDS: Final = 60
"""SDK: ``fal.App.host_kwargs["keep_alive"] = 60``."""
DEFAULT_MIN_CONCURRENCY: Final = 0
"""SDK/platform: ``FAL_SERVERLESS_DEFAULT_MIN_CONCURRENCY = 0`` (scale to zero)."""
DEFAULT_MAX_CONCURRENCY: Final = 10
"""kubefal: the SDK sends None and fal documents no default; a finite ceiling caps GPU spend."""
DEFAULT_CONCURRENCY_BUFFER: Final = 0
"""SDK/platform: ``FAL_SERVERLESS_DEFAULT_CONCURRENCY_BUFFER = 0``."""
DEFAULT_CONCURRENCY_BUFFER_PERC: Final = 0
"""SDK/platform: ``FAL_SERVERLESS_DEFAULT_CONCURRENCY_BUFFER_PERC = 0``."""
DEFAULT_SCALING_DELAY_SECONDS: Final = 0
"""fal docs: scaling_delay defaults to 0 s (the SDK sends None)."""
DEFAULT_MAX_MULTIPLEXING: Final = 1
"""SDK: ``FAL_SERVERLESS_DEFAULT_MAX_MULTIPLEXING = 1``."""
DEFAULT_STARTUP_TIMEOUT_SECONDS: Final = 600
"""SDK: ``fal.app.DEFAULT_PLATFORM_STARTUP_TIMEOUT = 600``."""
DEFAULT_REQUEST_TIMEOUT_SECONDS: Final = 3600
"""kubefal: the SDK sends None; one hour bounds a request and the runner's termination grace."""
# The SDK never calls the health check; fal's platform documents these defaults, and
# fal.HealthCheck's method defaults to POST (docs/fal-compat.md, "fal SDK 1.83.0").
DEFAULT_HEALTH_CHECK_START_PERIOD_SECONDS: Final = 30
DEFAULT_HEALTH_CHECK_TIMEOUT_SECONDS: Final = 5
DEFAULT_HEALTH_CHECK_FAILURE_THRESHOLD: Final = 3
# spec.auth defaults to private: the SDK's app_auth is None and `fal deploy` then uses
# "private" (fal/api/deploy.py: ``loaded.app_auth or "private"``); `fal run` uses public, but a
# FalApp is a deployment.

MAX_APP_NAME_LENGTH: Final = 63
"""A FalApp name is a DNS-1035 label: its children (a Service among them) carry the same name."""
APP_NAME_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_GPUS_PER_RUNNER: Final = 8
MAX_MACHINE_TYPES: Final = 8
GPU_MACHINE_TYPE_PREFIX: Final = "GPU-"
APP_REFERENCE_PATTERN: Final = r"^[A-Za-z0-9_./-]+::[A-Za-z_][A-Za-z0-9_]*$"
"""``file.py::Class`` or ``package.module::Class``."""
MACHINE_TYPE_PATTERN: Final = r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$"
HEALTH_CHECK_PATH_PATTERN: Final = r"^/[^\s]*$"
SERVICE_ACCOUNT_NAME_PATTERN: Final = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
"""A DNS-1123 subdomain, as Kubernetes names ServiceAccounts."""

MachineTypeName = Annotated[
    str, pydantic.StringConstraints(pattern=MACHINE_TYPE_PATTERN, max_length=63)
]
"""A machine type of the catalogue, e.g. "S" or "GPU-H100"."""
RegionName = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=63)]
"""A value of the node label topology.kubernetes.io/region."""
REQUIREMENT_PATTERN: Final = r"^[^-]"
Requirement = Annotated[
    str, pydantic.StringConstraints(min_length=1, max_length=1024, pattern=REQUIREMENT_PATTERN)
]
"""One pip requirement specifier, never a pip option: the runner passes each to ``pip install``
as one argument, where one starting with ``-`` (``--index-url URL``, ``-r FILE``, ``-e PATH``)
would change where and what every runner of the app installs (``fal deploy`` refuses them
too)."""
MAX_REQUIREMENT_LAYERS: Final = 16
MAX_LAYER_REQUIREMENTS: Final = 512
"""Requirements in one layer (and in the flat ``requirements``)."""
RequirementLayer = Annotated[
    list[Requirement], pydantic.Field(min_length=1, max_length=MAX_LAYER_REQUIREMENTS)
]
"""One layer of pip requirements, installed together."""


class AuthMode(enum.StrEnum):
    """Who may call the app (fal ``app_auth``)."""

    PRIVATE = "private"
    SHARED = "shared"
    PUBLIC = "public"


class Strategy(enum.StrEnum):
    """How a spec change replaces runners (fal ``deploy --strategy``)."""

    ROLLING = "rolling"
    RECREATE = "recreate"


class Scaler(enum.StrEnum):
    """What actuates the desired runner count computed by the gateway."""

    BUILTIN = "builtin"
    KEDA = "keda"
    HPA = "hpa"


class ScalingPolicy(enum.StrEnum):
    """How the gateway turns an app's queue into a desired runner count."""

    FAL = "fal"
    """fal's formula: every queued request counts as demand for a runner."""
    COUNT_STARTING = "countStarting"
    """fal's formula, less the queued requests that runners already starting (and ready ones)
    will have taken by the time a runner started now would be ready."""


class RetryCondition(enum.StrEnum):
    """A failure class the gateway would otherwise retry (fal ``skip_retry_conditions``)."""

    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"
    CONNECTION_ERROR = "connection_error"


class HealthCheckMethod(enum.StrEnum):
    """HTTP method of the user's health check; fal endpoints accept POST only."""

    POST = "POST"
    GET = "GET"


class Phase(enum.StrEnum):
    """A one-word summary of the app for ``kubectl get``; conditions carry the detail."""

    PENDING = "Pending"
    """Accepted; the operator has not rendered the workload yet."""
    PROGRESSING = "Progressing"
    """A rollout is under way or runners are starting."""
    READY = "Ready"
    """Every desired runner is ready."""
    SCALED_TO_ZERO = "ScaledToZero"
    """No runner is desired and none runs; the next request scales the app up."""
    WAITING_FOR_CAPACITY = "WaitingForCapacity"
    """Runners cannot be scheduled: no node of any listed machine type has room."""
    DEGRADED = "Degraded"
    """The app cannot reach its desired state (failed setup, crash loop, invalid reference)."""


class ConditionStatus(enum.StrEnum):
    """Status of a condition, as in ``metav1.Condition``."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(enum.StrEnum):
    """The condition types a FalApp reports."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    SCHEDULED = "Scheduled"
    DEGRADED = "Degraded"


def cel_rule(
    rule: str, *, message: str, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry: a CEL rule the API server evaluates.

    ``message`` must name the field it is about (``spec.scaling.minConcurrency ...``), and
    ``field_path`` (relative to the object carrying the rule) makes the API server report the
    error on that field.
    """
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def _kube_validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class KubeModel(pydantic.BaseModel):
    """Base of every FalApp model: camelCase aliases, attribute docstrings as descriptions."""

    model_config = pydantic.ConfigDict(
        alias_generator=pydantic.alias_generators.to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        validate_assignment=True,
    )

    def to_kube(self) -> dict[str, Any]:
        """Serialise with Kubernetes names, leaving out unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ConfigMapReference(KubeModel):
    """A ConfigMap in the FalApp's namespace."""

    name: str = pydantic.Field(min_length=1, max_length=253)
    """Name of the ConfigMap."""


_SOURCE_PATH_SEGMENT: Final = r"\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*"
SOURCE_PATH_PATTERN: Final = rf"^({_SOURCE_PATH_SEGMENT}/)*{_SOURCE_PATH_SEGMENT}$"
"""A relative path below the app directory: no leading ``/``, no empty, ``.`` or ``..``
segment (RE2 syntax, as the API server evaluates it)."""
MAX_SOURCE_CONFIG_MAPS: Final = 64
MAX_SOURCE_FILES_PER_CONFIG_MAP: Final = 1024


class SourceFile(KubeModel):
    """One key of a source ConfigMap and the path it takes below the app directory."""

    key: str = pydantic.Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """Key in the ConfigMap (``data`` or ``binaryData``)."""
    path: str = pydantic.Field(min_length=1, max_length=1024, pattern=SOURCE_PATH_PATTERN)
    """Relative path of the file below the app directory, e.g. "helpers/util.py"."""


class SourceConfigMap(KubeModel):
    """A ConfigMap holding part of the app's files, each key placed at its path."""

    name: str = pydantic.Field(min_length=1, max_length=253)
    """Name of the ConfigMap (in the FalApp's namespace)."""
    items: list[SourceFile] = pydantic.Field(
        min_length=1, max_length=MAX_SOURCE_FILES_PER_CONFIG_MAP
    )
    """Its keys and where each goes; keys not listed are not mounted."""


class SourceSpec(KubeModel):
    """Where the app files come from when they are not baked into ``image``."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=_kube_validations(
            cel_rule(
                "has(self.configMapRef) != has(self.configMaps)",
                message="spec.source needs exactly one of configMapRef or configMaps",
                field_path=".configMapRef",
            )
        )
    )

    config_map_ref: ConfigMapReference | None = None
    """ConfigMap whose keys are the app files (flat, key = file name), mounted into the
    runner's working directory; exclusive with configMaps."""
    config_maps: list[SourceConfigMap] | None = pydantic.Field(
        default=None, min_length=1, max_length=MAX_SOURCE_CONFIG_MAPS
    )
    """ConfigMaps projected together into the runner's working directory, each key at its
    path (sub-directories, packages, fal ``app_files`` and ``local_python_modules``); several
    ConfigMaps because one holds at most 1 MiB. What ``kubefal deploy`` and ``fal deploy``
    create for an app with more than its own directory's .py files; exclusive with
    configMapRef."""

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> SourceSpec:
        if (self.config_map_ref is None) == (self.config_maps is None):
            raise ValueError("spec.source needs exactly one of configMapRef or configMaps")
        if self.config_maps is not None:
            paths = [item.path for config_map in self.config_maps for item in config_map.items]
            duplicates = sorted({path for path in paths if paths.count(path) > 1})
            if duplicates:
                raise ValueError(f"spec.source.configMaps: paths listed twice: {duplicates[:5]}")
        return self

    @property
    def config_map_names(self) -> list[str]:
        """Every ConfigMap the source reads."""
        if self.config_map_ref is not None:
            return [self.config_map_ref.name]
        return [config_map.name for config_map in self.config_maps or []]


class ScalingSpec(KubeModel):
    """Runner scaling, with fal's semantics: desired = clamp(ceil(demand / maxMultiplexing) +
    buffer, minConcurrency, maxConcurrency)."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=_kube_validations(
            cel_rule(
                "!has(self.minConcurrency) || !has(self.maxConcurrency)"
                " || self.minConcurrency <= self.maxConcurrency",
                message="spec.scaling.minConcurrency must be <= spec.scaling.maxConcurrency",
                field_path=".minConcurrency",
            )
        )
    )

    min_concurrency: int = pydantic.Field(default=DEFAULT_MIN_CONCURRENCY, ge=0, le=10_000)
    """Runners kept alive at all times, whatever the traffic (fal ``min_concurrency``; 0 scales
    to zero)."""
    max_concurrency: int = pydantic.Field(default=DEFAULT_MAX_CONCURRENCY, ge=1, le=10_000)
    """Upper limit of runners (fal ``max_concurrency``). The SDK leaves it to the platform;
    kubefal defaults to 10."""
    keep_alive: int = pydantic.Field(default=DEFAULT_KEEP_ALIVE_SECONDS, ge=0, le=86_400)
    """Seconds a runner stays after its last request before it may be removed (fal
    ``keep_alive``)."""
    concurrency_buffer: int = pydantic.Field(default=DEFAULT_CONCURRENCY_BUFFER, ge=0, le=10_000)
    """Runners kept warm above current demand (fal ``concurrency_buffer``)."""
    concurrency_buffer_perc: int = pydantic.Field(
        default=DEFAULT_CONCURRENCY_BUFFER_PERC, ge=0, le=100
    )
    """Buffer as a percentage of the runners demand needs, 0-100; the buffer is the larger of
    this and concurrencyBuffer (fal ``concurrency_buffer_perc``)."""
    scaling_delay: int = pydantic.Field(default=DEFAULT_SCALING_DELAY_SECONDS, ge=0, le=86_400)
    """Seconds a request waits in the queue before it counts towards scaling up (fal
    ``scaling_delay``)."""
    max_multiplexing: int = pydantic.Field(default=DEFAULT_MAX_MULTIPLEXING, ge=1, le=1_000)
    """Concurrent requests one runner serves; the gateway enforces it (fal
    ``max_multiplexing``)."""
    policy: ScalingPolicy = ScalingPolicy.FAL
    """fal (default): fal's formula, where each queued request asks for a runner, so a burst
    during a cold start starts runners that find no work once the first ones are ready.
    countStarting: queued requests that the runners already starting or ready will take
    before a runner started now could be ready (from the app's mean request time and cold
    start time, as the gateway measured them) do not ask for more runners; never more runners
    than fal's formula, and exactly fal's formula until the gateway has seen one request
    complete and one runner start. Applies to every scaler (builtin, keda, hpa). A kubefal
    field: from a fal.App class, kubefal_scaling_policy = "countStarting"."""

    @pydantic.model_validator(mode="after")
    def _min_not_above_max(self) -> ScalingSpec:
        if self.min_concurrency > self.max_concurrency:
            raise ValueError(
                "spec.scaling.minConcurrency must be <= spec.scaling.maxConcurrency "
                f"(got {self.min_concurrency} > {self.max_concurrency})"
            )
        return self


class HealthCheckSpec(KubeModel):
    """The app's own health check (fal ``@fal.endpoint(path, health_check=fal.HealthCheck())``)."""

    path: str = pydantic.Field(pattern=HEALTH_CHECK_PATH_PATTERN, max_length=1024)
    """Path of the endpoint the runner calls, starting with "/"."""
    method: HealthCheckMethod = HealthCheckMethod.POST
    """HTTP method; fal registers every endpoint as POST-only."""
    start_period_seconds: int = pydantic.Field(
        default=DEFAULT_HEALTH_CHECK_START_PERIOD_SECONDS, ge=0, le=86_400
    )
    """Grace after setup before failures count (raised to startupTimeout when that is
    higher)."""
    timeout_seconds: int = pydantic.Field(
        default=DEFAULT_HEALTH_CHECK_TIMEOUT_SECONDS, ge=1, le=3_600
    )
    """Seconds one check may take before it counts as failed."""
    failure_threshold: int = pydantic.Field(
        default=DEFAULT_HEALTH_CHECK_FAILURE_THRESHOLD, ge=1, le=100
    )
    """Consecutive failures after which the runner is restarted."""
    call_regularly: bool = True
    """Call the check every 15 s (fal's default). When false, failureThreshold and
    startPeriodSeconds are ignored and the check runs only after an app response carrying the
    ``x-fal-runner-health-check`` header; one failure of that check makes the runner unready
    and unhealthy, so Kubernetes restarts it."""


class SecretKeyReference(KubeModel):
    """One key of a Secret in the FalApp's namespace."""

    name: str = pydantic.Field(min_length=1, max_length=253)
    """Name of the Secret."""
    key: str = pydantic.Field(default="FAL_KEY", min_length=1, max_length=253)
    """Key in the Secret whose value is used."""


class EnvVar(KubeModel):
    """An environment variable of the runner container (Kubernetes ``EnvVar``)."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=_kube_validations(
            cel_rule(
                "!(has(self.value) && has(self.valueFrom))",
                message="spec.env[].value and spec.env[].valueFrom are mutually exclusive",
                field_path=".valueFrom",
                reason="FieldValueForbidden",
            )
        )
    )

    name: str = pydantic.Field(min_length=1, max_length=1024)
    """Variable name."""
    value: str | None = None
    """Literal value; mutually exclusive with valueFrom."""
    value_from: dict[str, Any] | None = pydantic.Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Source of the value (Kubernetes ``EnvVarSource``: secretKeyRef, configMapKeyRef,
    fieldRef, resourceFieldRef), copied verbatim into the container."""

    @pydantic.model_validator(mode="after")
    def _value_or_value_from(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name!r}: set value or valueFrom, not both")
        return self


class EnvFromReference(KubeModel):
    """A ConfigMap or Secret whose keys become environment variables."""

    name: str = pydantic.Field(min_length=1, max_length=253)
    """Name of the ConfigMap or Secret."""
    optional: bool | None = None
    """Start the runner even when the object does not exist."""


class EnvFromSource(KubeModel):
    """Environment from a whole ConfigMap or Secret (Kubernetes ``EnvFromSource``); this is
    how fal ``secrets`` map to Kubernetes."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=_kube_validations(
            cel_rule(
                "has(self.configMapRef) != has(self.secretRef)",
                message="spec.envFrom[] needs exactly one of configMapRef or secretRef",
            )
        )
    )

    prefix: str | None = None
    """Prefix prepended to every key."""
    config_map_ref: EnvFromReference | None = None
    """The ConfigMap to read."""
    secret_ref: EnvFromReference | None = None
    """The Secret to read."""

    @pydantic.model_validator(mode="after")
    def _exactly_one_source(self) -> EnvFromSource:
        if (self.config_map_ref is None) == (self.secret_ref is None):
            raise ValueError("envFrom entries need exactly one of configMapRef or secretRef")
        return self


MAX_DOCKERFILE_BYTES: Final = 120 * 1024
"""A Dockerfile larger than this (UTF-8 bytes) is refused. The build Job gets it, with the
runner stage appended, in one environment variable, and Linux refuses to start a process
with an argument or environment string over 128 KiB (``MAX_ARG_STRLEN``): a larger one
would fail the build pod with "argument list too long"."""
MAX_BUILD_ARGS: Final = 64
MAX_BUILD_ARG_NAME_LENGTH: Final = 255
MAX_BUILD_ARG_VALUE_LENGTH: Final = 4096
"""Characters of a build argument's value: each ``NAME=VALUE`` is one argument of the build
Job's process, so it must stay far below Linux's 128 KiB per argument (``MAX_ARG_STRLEN``),
and all 64 with the largest Dockerfile below the 2 MiB of all of them (``ARG_MAX``)."""
BUILD_ARG_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""A build argument's name: what a Dockerfile's ``ARG`` accepts."""
BUILD_SECRET_ID_PATTERN: Final = r"^[-._a-zA-Z0-9]+$"
"""A build secret's id (``RUN --mount=type=secret,id=<id>``): a Secret key."""


class ContainerImageSpec(KubeModel):
    """An image kubefal builds in the cluster from a Dockerfile (fal ``fal.ContainerImage``).

    The operator builds it in a Job (buildah) with the kubefal runner layered on top, pushes
    it to the registry the chart configures, tagged by a hash of everything below, and runs
    the runners on it; the same content is built once (docs/packaging.md)."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=_kube_validations(
            cel_rule(
                "!has(self.buildArgs) || self.buildArgs.all(k, k.matches('"
                + BUILD_ARG_NAME_PATTERN
                + "'))",
                message="spec.containerImage.buildArgs names must be ARG names "
                "([A-Za-z_][A-Za-z0-9_]*)",
                field_path=".buildArgs",
            ),
            cel_rule(
                "!has(self.buildArgs) || self.buildArgs.all(k, size(k) <= "
                + str(MAX_BUILD_ARG_NAME_LENGTH)
                + ")",
                message="spec.containerImage.buildArgs names must be at most "
                f"{MAX_BUILD_ARG_NAME_LENGTH} characters",
                field_path=".buildArgs",
            ),
            cel_rule(
                f"size(bytes(self.dockerfile)) <= {MAX_DOCKERFILE_BYTES}",
                message="spec.containerImage.dockerfile must be at most "
                f"{MAX_DOCKERFILE_BYTES} bytes (UTF-8)",
                field_path=".dockerfile",
            ),
        )
    )

    dockerfile: str = pydantic.Field(min_length=1, max_length=MAX_DOCKERFILE_BYTES)
    """The Dockerfile (fal ``dockerfile_str``). Its base image needs Python 3.11 (the
    runner's); the runner is added as a last stage."""
    build_args: dict[str, str] = pydantic.Field(
        default_factory=dict,
        json_schema_extra={
            "maxProperties": MAX_BUILD_ARGS,
            "additionalProperties": {
                "type": "string",
                "maxLength": MAX_BUILD_ARG_VALUE_LENGTH,
                "description": "The argument's value.",
            },
        },
    )
    """``--build-arg`` values (fal ``build_args``)."""
    secret_ref: ConfigMapReference | None = None
    """A Secret in the FalApp's namespace whose keys are build secrets, each usable as
    ``RUN --mount=type=secret,id=<key>`` (fal ``secrets``); never stored in the image."""
    context: list[SourceConfigMap] | None = pydantic.Field(
        default=None, min_length=1, max_length=MAX_SOURCE_CONFIG_MAPS
    )
    """ConfigMaps holding the build context (the files COPY and ADD read), each key at its
    path; unset: an empty context."""

    @pydantic.field_validator("build_args")
    @classmethod
    def _build_arg_names(cls, values: dict[str, str]) -> dict[str, str]:
        if len(values) > MAX_BUILD_ARGS:
            raise ValueError(f"at most {MAX_BUILD_ARGS} build arguments")
        bad = sorted(name for name in values if not re.match(BUILD_ARG_NAME_PATTERN, name))
        if bad:
            raise ValueError(f"not ARG names: {', '.join(bad[:5])}")
        if any(len(name) > MAX_BUILD_ARG_NAME_LENGTH for name in values):
            raise ValueError(f"names must be at most {MAX_BUILD_ARG_NAME_LENGTH} characters")
        if any(len(value) > MAX_BUILD_ARG_VALUE_LENGTH for value in values.values()):
            raise ValueError(f"values must be at most {MAX_BUILD_ARG_VALUE_LENGTH} characters")
        return values

    @pydantic.field_validator("dockerfile")
    @classmethod
    def _dockerfile_bytes(cls, value: str) -> str:
        if len(value.encode()) > MAX_DOCKERFILE_BYTES:
            raise ValueError(f"must be at most {MAX_DOCKERFILE_BYTES} bytes (UTF-8)")
        return value


class FalAppSpec(KubeModel):
    """What to run and how: every field maps 1:1 to a ``fal.App`` attribute."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=_kube_validations(
            cel_rule(
                "!has(self.numGpus) || (has(self.machineTypes)"
                f" && self.machineTypes.all(m, m.startsWith('{GPU_MACHINE_TYPE_PREFIX}')))",
                message="spec.numGpus is allowed only when every spec.machineTypes entry is a"
                f" GPU machine type ({GPU_MACHINE_TYPE_PREFIX}*)",
                field_path=".numGpus",
                reason="FieldValueForbidden",
            ),
            cel_rule(
                "!has(self.machineTypes)"
                " || self.machineTypes.all(m, self.machineTypes.exists_one(n, n == m))",
                message="spec.machineTypes must not list a machine type twice",
                field_path=".machineTypes",
            ),
            cel_rule(
                "!has(self.requirements) || size(self.requirements) == 0"
                " || !has(self.requirementLayers) || size(self.requirementLayers) == 0",
                message="spec.requirements and spec.requirementLayers are mutually exclusive"
                " (a flat list is one layer)",
                field_path=".requirementLayers",
                reason="FieldValueForbidden",
            ),
            cel_rule(
                "!has(self.image) || !has(self.containerImage)",
                message="spec.image and spec.containerImage are mutually exclusive (one is"
                " prebuilt, the other built by kubefal)",
                field_path=".containerImage",
                reason="FieldValueForbidden",
            ),
            cel_rule(
                "!has(self.scaler) || self.scaler != 'hpa' || !has(self.scaling)"
                " || !has(self.scaling.minConcurrency) || self.scaling.minConcurrency >= 1",
                message="spec.scaling.minConcurrency must be >= 1 when spec.scaler is hpa"
                " (a HorizontalPodAutoscaler cannot scale to zero)",
                field_path=".scaling.minConcurrency",
            ),
        )
    )

    app: str = pydantic.Field(pattern=APP_REFERENCE_PATTERN, max_length=512)
    """The fal.App class to serve: "app.py::MyApp" (file in the image or source) or
    "package.module::MyApp"."""
    image: str | None = pydantic.Field(default=None, min_length=1, max_length=1024)
    """Image holding the app and the kubefal runner; unset means the chart's generic runner
    image (fal ``image``)."""
    source: SourceSpec | None = None
    """App files mounted into the runner when they are not baked into the image."""
    container_image: ContainerImageSpec | None = None
    """An image to build in the cluster from a Dockerfile, with the runner layered in (fal
    ``image=fal.ContainerImage(...)``); exclusive with image."""
    requirements: list[Requirement] = pydantic.Field(
        default_factory=list, max_length=MAX_LAYER_REQUIREMENTS
    )
    """pip requirements installed at runner start (counts against startupTimeout); fal
    ``requirements`` as a flat list (one layer). Exclusive with requirementLayers."""
    requirement_layers: list[RequirementLayer] = pydantic.Field(
        default_factory=list,
        max_length=MAX_REQUIREMENT_LAYERS,
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    """pip requirements in ordered layers (fal ``requirements`` as a list of lists): each
    layer is installed on top of the layers before it into its own cached environment, so
    apps that share leading layers (say torch) share that install. Exclusive with
    requirements."""
    machine_types: list[MachineTypeName] = pydantic.Field(
        default_factory=lambda: [DEFAULT_MACHINE_TYPE],
        min_length=1,
        max_length=MAX_MACHINE_TYPES,
        # Atomic, not a set: the order is the preference, and a server-side apply by a second
        # manager must not merge entries into it.
        json_schema_extra={"default": [DEFAULT_MACHINE_TYPE], "x-kubernetes-list-type": "atomic"},
    )
    """Machine types from the catalogue, first choice first; the scheduler takes the first
    with capacity (fal ``machine_type``; a single fal string is a one-element list)."""
    num_gpus: int | None = pydantic.Field(default=None, ge=1, le=MAX_GPUS_PER_RUNNER)
    """GPUs per runner, 1-8; only with GPU machine types. Unset means one GPU on GPU types
    (fal ``num_gpus``)."""
    regions: list[RegionName] = pydantic.Field(
        default_factory=list, max_length=32, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Allowed regions (node label topology.kubernetes.io/region); empty means any (fal
    ``regions``)."""
    auth: AuthMode = AuthMode.PRIVATE
    """Who may call the app: private (API keys of this namespace), shared (any valid key),
    public (no key). fal deploy defaults to private (fal ``app_auth``)."""
    scaling: ScalingSpec = pydantic.Field(
        default_factory=ScalingSpec, json_schema_extra={"default": {}}
    )
    """Runner scaling with fal's semantics: needed = ceil(demand / maxMultiplexing);
    buffer = max(concurrencyBuffer, ceil(needed * concurrencyBufferPerc / 100));
    desired runners = clamp(needed + buffer, minConcurrency, maxConcurrency)."""
    request_timeout: int = pydantic.Field(default=DEFAULT_REQUEST_TIMEOUT_SECONDS, ge=1, le=86_400)
    """Seconds one request may run; also bounds the runner's termination grace period (fal
    ``request_timeout``)."""
    startup_timeout: int = pydantic.Field(default=DEFAULT_STARTUP_TIMEOUT_SECONDS, ge=1, le=86_400)
    """Seconds the runner may spend installing requirements and in setup() before it is
    restarted (fal ``startup_timeout``)."""
    health_check: HealthCheckSpec | None = None
    """The app's own health check endpoint; unset means only the runner's built-in probes."""
    env: list[EnvVar] = pydantic.Field(
        default_factory=list,
        max_length=256,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Environment variables of the runner container."""
    env_from: list[EnvFromSource] = pydantic.Field(default_factory=list, max_length=64)
    """ConfigMaps and Secrets exposed as environment variables (fal ``secrets``)."""
    service_account_name: str | None = pydantic.Field(
        default=None, pattern=SERVICE_ACCOUNT_NAME_PATTERN, max_length=253
    )
    """ServiceAccount the runner pods run as; unset means the namespace's "default". Its API
    token is mounted only when automountServiceAccountToken is true."""
    automount_service_account_token: bool = False
    """Mount the ServiceAccount's API token into the runner, where the app's code (and
    everything it installs) can call the Kubernetes API with that account's permissions.
    Default false: runner pods get no token."""
    fal_key_secret_ref: SecretKeyReference | None = None
    """Secret key holding the FAL_KEY the app presents when it calls other apps through the
    gateway with fal_client (FAL_RUN_HOST and FAL_QUEUE_RUN_HOST point at the gateway);
    unset means the runner gets no FAL_KEY (kubefal never hands out a key of its own)."""
    persistent_data: bool = False
    """Mount the namespace's shared persistent storage at /data in every runner (fal's
    /data: fal.toolkit weights and repos, fal files, fal.sync_dir), with the Hugging Face,
    torch, Triton and pip caches and the requirements cache on it, so a second cold start
    downloads nothing. Needs the operator's data volume (KUBEFAL_RUNNER_DATA_VOLUME); from a
    fal.App class: `kubefal_persistent_data = True`."""
    strategy: Strategy = Strategy.ROLLING
    """rolling (new runners before old ones go) or recreate (never doubles GPUs); fal
    ``deploy --strategy``."""
    skip_retry_conditions: list[RetryCondition] = pydantic.Field(
        default_factory=list, max_length=3, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Failures the gateway must not retry (fal ``skip_retry_conditions``)."""
    scaler: Scaler = Scaler.BUILTIN
    """What actuates scaling: builtin (operator sets replicas), keda (ScaledObject with the
    gateway's external-push scaler) or hpa (External metric)."""

    @pydantic.field_validator("machine_types", "regions", "skip_retry_conditions")
    @classmethod
    def _no_duplicates(cls, values: list[str]) -> list[str]:
        duplicates = sorted({value for value in values if values.count(value) > 1})
        if duplicates:
            raise ValueError(f"duplicate entries: {', '.join(duplicates)}")
        return values

    @pydantic.field_validator("env")
    @classmethod
    def _unique_env_names(cls, env: list[EnvVar]) -> list[EnvVar]:
        names = [variable.name for variable in env]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate env names: {', '.join(duplicates)}")
        return env

    @pydantic.model_validator(mode="after")
    def _gpus_only_on_gpu_types(self) -> FalAppSpec:
        if self.num_gpus is not None and not self.uses_gpu:
            raise ValueError(
                "spec.numGpus is allowed only when every spec.machineTypes entry is a GPU type "
                f"({GPU_MACHINE_TYPE_PREFIX}*)"
            )
        return self

    @pydantic.model_validator(mode="after")
    def _one_image_form(self) -> FalAppSpec:
        if self.image is not None and self.container_image is not None:
            raise ValueError(
                "spec.image and spec.containerImage are mutually exclusive (one is prebuilt, "
                "the other built by kubefal)"
            )
        return self

    @pydantic.model_validator(mode="after")
    def _one_requirements_form(self) -> FalAppSpec:
        if self.requirements and self.requirement_layers:
            raise ValueError(
                "spec.requirements and spec.requirementLayers are mutually exclusive "
                "(a flat list is one layer)"
            )
        return self

    @property
    def install_layers(self) -> list[list[str]]:
        """The requirements as the runner installs them: layer by layer."""
        if self.requirement_layers:
            return [list(layer) for layer in self.requirement_layers]
        return [list(self.requirements)] if self.requirements else []

    @pydantic.model_validator(mode="after")
    def _hpa_cannot_scale_to_zero(self) -> FalAppSpec:
        if self.scaler is Scaler.HPA and self.scaling.min_concurrency < 1:
            raise ValueError(
                "spec.scaling.minConcurrency must be >= 1 when spec.scaler is hpa "
                "(a HorizontalPodAutoscaler cannot scale to zero)"
            )
        return self

    @property
    def uses_gpu(self) -> bool:
        """True when every listed machine type is a GPU type."""
        return all(is_gpu_machine_type(machine) for machine in self.machine_types)

    @property
    def gpus_per_runner(self) -> int:
        """GPUs each runner requests: numGpus, or 1 on GPU types, or 0 on CPU types."""
        if not self.uses_gpu:
            return 0
        return self.num_gpus if self.num_gpus is not None else 1


class Condition(KubeModel):
    """An observation of one aspect of the app (``metav1.Condition``)."""

    type: ConditionType
    """Ready, Progressing, Scheduled or Degraded."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = pydantic.Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """CamelCase reason (see kubefal_api.conditions), e.g. WaitingForGPUCapacity."""
    message: str = pydantic.Field(default="", max_length=32_768)
    """Human-readable detail, e.g. the scheduler's message."""
    last_transition_time: datetime.datetime
    """When status last changed."""
    observed_generation: int | None = pydantic.Field(default=None, ge=0)
    """metadata.generation the condition was computed for."""


class RunnerCounts(KubeModel):
    """Runners of the app by fal runner state."""

    pending: int = pydantic.Field(default=0, ge=0)
    """Waiting to be scheduled or for the image."""
    setup: int = pydantic.Field(default=0, ge=0)
    """Installing requirements or running setup()."""
    running: int = pydantic.Field(default=0, ge=0)
    """Serving at least one request."""
    idle: int = pydantic.Field(default=0, ge=0)
    """Ready, serving nothing."""
    draining: int = pydantic.Field(default=0, ge=0)
    """Finishing requests before termination."""


class Endpoints(KubeModel):
    """URLs that reach the app through the gateway."""

    queue: str | None = None
    """Queue URL (fal_client ``submit``), e.g. https://queue.example/ns/name."""
    run: str | None = None
    """Synchronous URL (fal_client ``run``), e.g. https://run.example/ns/name."""


class BuildPhase(enum.StrEnum):
    """Where the build of ``spec.containerImage`` is."""

    BUILDING = "Building"
    BUILT = "Built"
    CACHED = "Cached"
    FAILED = "Failed"


class BuildStatus(KubeModel):
    """The build of ``spec.containerImage``."""

    phase: BuildPhase
    """Building (a Job runs), Built (this generation's Job pushed it), Cached (the registry
    already had it: no build) or Failed."""
    image: str
    """The image reference, tagged by the content hash."""
    job: str | None = None
    """The build Job (its pod's logs are the build log)."""
    message: str = pydantic.Field(default="", max_length=32_768)
    """Why it failed, or what it waits for."""
    observed_generation: int | None = pydantic.Field(default=None, ge=0)
    """metadata.generation this build status is for."""


class FalAppStatus(KubeModel):
    """What the operator observed; written only through the status subresource."""

    phase: Phase = Phase.PENDING
    """One-word summary: Pending, Progressing, Ready, ScaledToZero, WaitingForCapacity or
    Degraded."""
    conditions: list[Condition] = pydantic.Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready, Progressing, Scheduled and Degraded, each with its observedGeneration."""
    observed_generation: int | None = pydantic.Field(default=None, ge=0)
    """metadata.generation the status was computed for."""
    machine_type: str | None = None
    """Machine type the runners run on (the first in spec.machineTypes until one is
    scheduled)."""
    replicas: int = pydantic.Field(default=0, ge=0)
    """Runner pods that exist."""
    ready_replicas: int = pydantic.Field(default=0, ge=0)
    """Runner pods that are ready."""
    desired_runners: int = pydantic.Field(default=0, ge=0)
    """Runners the scaler wants."""
    runners: RunnerCounts = pydantic.Field(default_factory=RunnerCounts)
    """Runners by state."""
    endpoints: Endpoints = pydantic.Field(default_factory=Endpoints)
    """Gateway URLs of the app."""
    build: BuildStatus | None = None
    """The build of spec.containerImage, when the app has one."""

    def condition(self, condition_type: ConditionType) -> Condition | None:
        """The condition of that type, if reported."""
        return next((c for c in self.conditions if c.type == condition_type), None)


class ObjectMeta(pydantic.BaseModel):
    """The parts of ``metav1.ObjectMeta`` kubefal reads; everything else is kept as is."""

    model_config = pydantic.ConfigDict(
        alias_generator=pydantic.alias_generators.to_camel,
        populate_by_name=True,
        extra="allow",
    )

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = pydantic.Field(default_factory=dict)
    annotations: dict[str, str] = pydantic.Field(default_factory=dict)


class FalApp(KubeModel):
    """A fal.App served on this cluster: a Deployment of runner pods behind the kubefal
    gateway, scaled by fal's rules."""

    api_version: str = pydantic.Field(default=API_VERSION, pattern=rf"^{re.escape(API_VERSION)}$")
    """kubefal.io/v1alpha1."""
    kind: str = pydantic.Field(default=KIND, pattern=rf"^{KIND}$")
    """FalApp."""
    metadata: ObjectMeta = pydantic.Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: FalAppSpec
    """What to run and how."""
    status: FalAppStatus | None = None
    """What the operator observed."""

    @pydantic.field_validator("metadata")
    @classmethod
    def _name_is_a_dns_1035_label(cls, metadata: ObjectMeta) -> ObjectMeta:
        name = metadata.name
        if name is not None and (
            len(name) > MAX_APP_NAME_LENGTH or re.fullmatch(APP_NAME_PATTERN, name) is None
        ):
            raise ValueError(
                f"metadata.name {name!r} must be a DNS-1035 label: lowercase letters, digits "
                f"and '-', starting with a letter, at most {MAX_APP_NAME_LENGTH} characters"
            )
        return metadata

    @classmethod
    def from_kube(cls, obj: Any) -> FalApp:
        """Parse a FalApp from a Kubernetes object (a dict, or kopf's body mapping)."""
        return cls.model_validate(dict(obj))


def is_gpu_machine_type(machine_type: str) -> bool:
    """True for GPU machine types (fal's naming: ``GPU-*``)."""
    return machine_type.startswith(GPU_MACHINE_TYPE_PREFIX)
