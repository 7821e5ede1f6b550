"""The operator's settings: flags and environment variables, read once at start and passed down.

``OperatorSettings`` declares every knob once (flag ``--runner-image``, variable
``KUBEFAL_RUNNER_IMAGE``: the names the Helm chart sets, a flag winning over its variable) with
the shared loader of ``kubefal_api.process_settings``; ``OperatorConfig`` is the shape the
handlers use, built from it (defaults that depend on the operator's namespace are filled in
there). The defaults live in the dataclasses that use them (``OperatorConfig``,
``render.common.RenderSettings``, ``build.BuildSettings``); the settings model refers to them.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import pydantic
from pydantic import Field

from kubefal_api import naming
from kubefal_api.process_settings import Env, Flag, ProcessSettings, SettingsError
from kubefal_operator import build, signals, status
from kubefal_operator.render import common

KEDA_SCALER_PORT = 9091
"""The chart's ``keda.port``: the gateway admin Service's ``grpc-keda`` port."""


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator needs to know that is not in a FalApp."""

    namespace: str = "kubefal-system"
    """The operator's own namespace (KUBEFAL_OPERATOR_NAMESPACE)."""
    catalogue_namespace: str = "kubefal-system"
    """Namespace of the machine catalogue ConfigMap (KUBEFAL_MACHINES_NAMESPACE, defaults to
    the operator's namespace)."""
    catalogue_name: str = naming.MACHINE_CATALOGUE_CONFIGMAP
    """Name of the machine catalogue ConfigMap (KUBEFAL_MACHINES_CONFIGMAP)."""
    metrics_host: str = "0.0.0.0"
    """Address of the Prometheus endpoint (KUBEFAL_OPERATOR_METRICS_HOST)."""
    metrics_port: int = 8000
    """Port of the Prometheus endpoint (KUBEFAL_OPERATOR_METRICS_PORT)."""
    render: common.RenderSettings = dataclasses.field(default_factory=common.RenderSettings)
    """Cluster-wide rendering choices (KUBEFAL_RUNNER_IMAGE, ...)."""
    gateway: status.Gateway = dataclasses.field(
        default_factory=lambda: status.Gateway(
            queue_url="http://kubefal-gateway-queue.kubefal-system.svc",
            run_url="http://kubefal-gateway-run.kubefal-system.svc",
        )
    )
    """Gateway URLs reported as status.endpoints (KUBEFAL_GATEWAY_QUEUE_URL, _RUN_URL)."""
    catalogue_rollout_concurrency: int = 16
    """Apps re-rendered at once after a catalogue change."""
    gateway_admin_token: str | None = None
    """Bearer token of the gateway's admin listener (KUBEFAL_GATEWAY_ADMIN_TOKEN, the
    gateway's ``--admin-token``; the chart puts both in one Secret). Unset: none is sent."""
    gateway_admin_url: str | None = None
    """The gateway's admin listener (KUBEFAL_GATEWAY_ADMIN_URL, flag --gateway-admin-url),
    e.g. ``http://kubefal-gateway-admin.kubefal-system.svc:9090``. When set, the builtin
    actuator follows its scaling signals; unset, replicas follow minConcurrency."""
    build: build.BuildSettings = dataclasses.field(default_factory=build.BuildSettings)
    """Where spec.containerImage apps are built and pushed (KUBEFAL_BUILD_*, see
    :class:`kubefal_operator.build.BuildSettings`)."""
    actuator_interval_seconds: float = 0.15
    """At most one replicas write per app per this interval (KUBEFAL_ACTUATOR_INTERVAL);
    bursts of signals converge to the latest one."""
    unclaimed_signals_limit: int = 1000
    """Scaling signals held for apps the operator does not know yet, at most this many (the
    oldest goes first; KUBEFAL_UNCLAIMED_SIGNALS_LIMIT)."""
    unclaimed_signal_seconds: float = 60.0
    """How long such a signal is held before it is dropped (KUBEFAL_UNCLAIMED_SIGNAL_SECONDS)."""
    runner_keys: bool = False
    """Give every FalApp without its own key a storage-only key of its namespace as FAL_KEY
    (KUBEFAL_RUNNER_KEYS; default: on when KUBEFAL_RUNNER_FAL_REST_HOST is set). See
    ``runner_keys``."""
    key_namespace: str = "kubefal-system"
    """Namespace the gateway reads API-key Secrets from, its ``--key-namespace``, where
    runner key records go (KUBEFAL_KEY_NAMESPACE, default the gateway's namespace); ``*``
    (a gateway reading keys everywhere): each record goes to its app's namespace."""

    @property
    def actuated(self) -> bool:
        """True when the builtin actuator runs (a gateway admin URL is configured)."""
        return bool(self.gateway_admin_url)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """The configuration from environment variables alone (no flags); a malformed value
        raises `ConfigError` naming the variable."""
        return cls.from_settings(OperatorSettings.read({}, environ))

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> OperatorConfig:
        """The handlers' configuration; fills in the defaults that follow the namespace."""
        namespace = settings.operator_namespace
        gateway_namespace = settings.gateway_namespace or namespace
        announce = settings.runner_announce_url
        return cls(
            namespace=namespace,
            catalogue_namespace=settings.machines_namespace or namespace,
            catalogue_name=settings.machines_configmap,
            gateway_admin_token=settings.gateway_admin_token,
            metrics_host=settings.operator_metrics_host,
            metrics_port=settings.operator_metrics_port,
            render=common.RenderSettings(
                runner_image=settings.runner_image,
                drain_margin_seconds=settings.drain_margin_seconds,
                keda_scaler_address=settings.keda_scaler_address
                or f"kubefal-gateway-admin.{namespace}.svc:{KEDA_SCALER_PORT}",
                keda_polling_interval_seconds=settings.keda_polling_interval,
                runner_run_as_user=settings.runner_run_as_user,
                runner_run_as_group=settings.runner_run_as_group,
                runner_read_only_root_filesystem=settings.runner_read_only_root_filesystem,
                gateway_namespace=gateway_namespace,
                gateway_pod_labels=settings.gateway_pod_labels,
                fal_run_host=settings.runner_fal_run_host,
                fal_queue_run_host=settings.runner_fal_queue_run_host,
                fal_rest_host=settings.runner_fal_rest_host,
                data_volume=settings.runner_data_volume,
                gateway_ca_pem=_read_ca(settings.gateway_ca_file),
                runner_announce_url=None
                if announce is not None and announce.lower() == "off"
                else announce or runner_announce_url(settings.gateway_admin_url),
            ),
            gateway_admin_url=settings.gateway_admin_url,
            build=build.BuildSettings(
                registry=settings.build_registry,
                insecure_registry=settings.build_registry_insecure,
                builder_image=settings.builder_image,
                push_secret=settings.build_push_secret,
                timeout_seconds=settings.build_timeout,
                finished_ttl_seconds=settings.build_job_ttl,
                pod_overrides=settings.build_pod_overrides,
                runner_user=settings.runner_run_as_user,
            ),
            runner_keys=bool(settings.runner_fal_rest_host)
            if settings.runner_keys is None
            else settings.runner_keys,
            key_namespace=settings.key_namespace or gateway_namespace,
            actuator_interval_seconds=settings.actuator_interval,
            unclaimed_signals_limit=settings.unclaimed_signals_limit,
            unclaimed_signal_seconds=settings.unclaimed_signal_seconds,
            gateway=status.Gateway(
                queue_url=settings.gateway_queue_url
                or f"http://kubefal-gateway-queue.{namespace}.svc",
                run_url=settings.gateway_run_url or f"http://kubefal-gateway-run.{namespace}.svc",
            ),
        )


ConfigError = SettingsError
"""A flag or environment variable of the operator has a value it cannot use."""

LABEL_KEY_PATTERN = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
MAX_CA_BYTES = 256 * 1024
"""A CA bundle larger than this is a configuration mistake (it lands in every runner pod)."""
DATA_VOLUME_SOURCES = frozenset(
    {"nfs", "hostPath", "csi", "persistentVolumeClaim", "cephfs", "glusterfs", "azureFile"}
)


def _labels(value: Any) -> Any:
    """``k=v,k=v`` to sorted label pairs (a tuple given in code passes through)."""
    if not isinstance(value, str):
        return value
    labels: dict[str, str] = {}
    for item in value.split(","):
        key, separator, label_value = item.strip().partition("=")
        if (
            not separator
            or not LABEL_KEY_PATTERN.match(key)
            or not LABEL_VALUE_PATTERN.match(label_value)
        ):
            raise ValueError(f"{item!r} is not a label key=value")
        labels[key] = label_value
    return tuple(sorted(labels.items()))


def _data_volume(value: str | None) -> str | None:
    """One volume source as JSON, normalised."""
    if value is None:
        return None
    try:
        source = json.loads(value)
    except ValueError:
        raise ValueError("not JSON") from None
    if (
        not isinstance(source, dict)
        or len(source) != 1
        or next(iter(source)) not in DATA_VOLUME_SOURCES
        or not isinstance(next(iter(source.values())), dict)
    ):
        raise ValueError(
            "expected one volume source, one of " + ", ".join(sorted(DATA_VOLUME_SOURCES))
        )
    return json.dumps(source, sort_keys=True)


def _registry(value: str | None) -> str | None:
    registry = None if value is None else value.strip().rstrip("/") or None
    if registry is not None and not build.REGISTRY_PATTERN.match(registry):
        raise ValueError("expected host[:port][/path] (lowercase)")
    return registry


def _pod_overrides(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        return build.pod_overrides(value.strip())
    except build.BuildSettingsError as error:
        raise ValueError(str(error)) from None


UserId = Annotated[int, Field(ge=1, le=2**31 - 1)]
BuildSeconds = Annotated[int, Field(ge=1, le=7 * 86400)]
_CONFIG = OperatorConfig()
_RENDER = common.RenderSettings()
_BUILD = build.BuildSettings()


class OperatorSettings(ProcessSettings):
    """Every flag and environment variable of the operator (``KUBEFAL_<FIELD>``)."""

    env_prefix: ClassVar[str] = "KUBEFAL_"

    operator_namespace: str = Field(
        default=_CONFIG.namespace, description="The operator's own namespace."
    )
    operator_liveness: Annotated[str, Flag("--liveness")] = Field(
        default="http://0.0.0.0:8080/healthz", description="kopf's liveness endpoint URL."
    )
    operator_peering: Annotated[str | None, Flag("--peering")] = Field(
        default=None,
        description="kopf peering name for several replicas; unset: standalone (the chart runs "
        "one replica).",
    )
    operator_metrics_host: str = Field(
        default=_CONFIG.metrics_host, description="Address of the Prometheus endpoint."
    )
    operator_metrics_port: int = Field(
        default=_CONFIG.metrics_port, ge=0, le=65535, description="Port of the Prometheus endpoint."
    )
    machines_namespace: str | None = Field(
        default=None,
        description="Namespace of the machine catalogue ConfigMap; unset: the operator's.",
    )
    machines_configmap: str = Field(
        default=_CONFIG.catalogue_name, description="Name of the machine catalogue ConfigMap."
    )
    gateway_admin_url: str | None = Field(
        default=None,
        description="The gateway's admin listener (http://kubefal-gateway-admin.<ns>.svc:9090): "
        "when set, the builtin actuator follows its scaling signals; unset, replicas follow "
        "minConcurrency.",
    )
    gateway_admin_token: Annotated[str | None, Env(signals.ADMIN_TOKEN_ENV)] = Field(
        default=None,
        description="Bearer token of the gateway's admin listener (the gateway's "
        "--admin-token; the chart puts both in one Secret). Unset: none is sent.",
    )
    actuator_interval: float = Field(
        default=_CONFIG.actuator_interval_seconds,
        gt=0,
        description="At most one replicas write per app per this many seconds; bursts of "
        "signals converge to the latest one.",
    )
    unclaimed_signals_limit: int = Field(
        default=_CONFIG.unclaimed_signals_limit,
        ge=0,
        description="Scaling signals held for apps the operator does not know yet (the "
        "gateway may see a new FalApp first), at most this many; the oldest goes first.",
    )
    unclaimed_signal_seconds: float = Field(
        default=_CONFIG.unclaimed_signal_seconds,
        gt=0,
        description="How long a signal for an app the operator does not know is held.",
    )
    gateway_queue_url: str | None = Field(
        default=None,
        description="Queue URL reported in FalApp status.endpoints; unset: "
        "http://kubefal-gateway-queue.<operator namespace>.svc.",
    )
    gateway_run_url: str | None = Field(
        default=None,
        description="Run URL reported in FalApp status.endpoints; unset: "
        "http://kubefal-gateway-run.<operator namespace>.svc.",
    )
    runner_image: str = Field(
        default=_RENDER.runner_image,
        description="Image of the generic runner, used when a FalApp sets no spec.image.",
    )
    drain_margin_seconds: int = Field(
        default=_RENDER.drain_margin_seconds,
        ge=0,
        description="Added to requestTimeout for a runner's termination grace period.",
    )
    keda_scaler_address: str | None = Field(
        default=None,
        description="host:port of the gateway's KEDA external scaler (spec.scaler: keda); "
        f"unset: kubefal-gateway-admin.<operator namespace>.svc:{KEDA_SCALER_PORT}.",
    )
    keda_polling_interval: int = Field(
        default=_RENDER.keda_polling_interval_seconds,
        ge=1,
        description="ScaledObject pollingInterval in seconds.",
    )
    runner_run_as_user: UserId = Field(
        default=_RENDER.runner_run_as_user,
        description="UID runner containers (and built images) run as; never root.",
    )
    runner_run_as_group: UserId = Field(
        default=_RENDER.runner_run_as_group,
        description="GID runner containers run as, also their fsGroup; never root.",
    )
    runner_read_only_root_filesystem: bool = Field(
        default=_RENDER.runner_read_only_root_filesystem,
        description="Mount the runner's root filesystem read-only.",
    )
    gateway_namespace: str | None = Field(
        default=None,
        description="Namespace of the gateway pods (the runners' NetworkPolicy admits only "
        "them); unset: the operator's.",
    )
    gateway_pod_labels: Annotated[
        tuple[tuple[str, str], ...], pydantic.BeforeValidator(_labels)
    ] = Field(
        default=_RENDER.gateway_pod_labels,
        description="Labels (k=v,k=v) that select the gateway's pods in its namespace.",
    )
    runner_fal_run_host: str | None = Field(
        default=None, description="FAL_RUN_HOST of runner pods; unset: not set."
    )
    runner_fal_queue_run_host: str | None = Field(
        default=None, description="FAL_QUEUE_RUN_HOST of runner pods; unset: not set."
    )
    runner_fal_rest_host: str | None = Field(
        default=None,
        description="FAL_REST_HOST of runner pods (the gateway's REST listener); unset: not set.",
    )
    runner_keys: bool | None = Field(
        default=None,
        description="Give every FalApp without its own key a storage-only key of its "
        "namespace as FAL_KEY; unset: on when runner FAL_REST_HOST is set.",
    )
    key_namespace: str | None = Field(
        default=None,
        description="Namespace the gateway reads API-key Secrets from (its --key-namespace), "
        "where runner key records go; * puts each in its app's namespace; unset: the gateway's "
        "namespace.",
    )
    runner_data_volume: Annotated[str | None, pydantic.AfterValidator(_data_volume)] = Field(
        default=None,
        description="JSON of the volume source holding every namespace's /data "
        '({"nfs": {...}}); unset: /data is an emptyDir.',
    )
    runner_announce_url: str | None = Field(
        default=None,
        description="Where runners announce readiness; off disables it; unset: the gateway "
        "admin URL plus /_kubefal/runners/ready.",
    )
    gateway_ca_file: pathlib.Path | None = Field(
        default=None,
        description="PEM CA that signed the gateway's certificate, handed to runners (a "
        "missing file means none).",
    )
    build_registry: Annotated[str | None, pydantic.AfterValidator(_registry)] = Field(
        default=_BUILD.registry,
        description="host[:port]/path images are pushed to; unset: FalApps with "
        "spec.containerImage are refused.",
    )
    build_registry_insecure: bool = Field(
        default=_BUILD.insecure_registry, description="Plain HTTP to the registry, no TLS."
    )
    builder_image: str = Field(default=_BUILD.builder_image, description="The image of build Jobs.")
    build_push_secret: str | None = Field(
        default=_BUILD.push_secret,
        description="A dockerconfigjson Secret in the app's namespace buildah pushes with; "
        "unset: anonymous.",
    )
    build_timeout: BuildSeconds = Field(
        default=_BUILD.timeout_seconds, description="Seconds a build may run."
    )
    build_job_ttl: BuildSeconds = Field(
        default=_BUILD.finished_ttl_seconds,
        description="Seconds finished build Jobs (and their logs) are kept.",
    )
    build_pod_overrides: Annotated[str | None, pydantic.AfterValidator(_pod_overrides)] = Field(
        default=_BUILD.pod_overrides,
        description="JSON object merged into the build pod's spec (nodeSelector, "
        "tolerations, ...).",
    )


def runner_announce_url(admin_url: str | None) -> str | None:
    """Where runners announce readiness: the gateway admin listener's announce path."""
    return None if not admin_url else admin_url.rstrip("/") + naming.RUNNER_ANNOUNCE_PATH


def _read_ca(path: pathlib.Path | None) -> str | None:
    """The PEM text of the gateway's CA, or None when no file is configured or present."""
    if path is None:
        return None
    ca_file = path
    if not ca_file.is_file():
        return None
    text = ca_file.read_bytes()[: MAX_CA_BYTES + 1].decode("ascii", "replace")
    if len(text) > MAX_CA_BYTES or "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(
            f"KUBEFAL_GATEWAY_CA_FILE (--gateway-ca-file)={path}: not a PEM certificate bundle"
        )
    return text.strip() + "\n"
