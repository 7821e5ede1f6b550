"""The operator's settings, read once from the environment at start and passed down.

Every knob is an environment variable (what a Helm chart sets) with a default that fits a
standard install; ``python -m kubefal_operator`` flags override the process-level ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Mapping

from kubefal_api import naming
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
        """Read the settings; a malformed value raises `ConfigError` naming the variable.

        Runner hardening and the gateway as runners see it (all optional):
        ``KUBEFAL_RUNNER_RUN_AS_USER`` / ``_RUN_AS_GROUP`` (10001, the runner image's user),
        ``KUBEFAL_RUNNER_READ_ONLY_ROOT_FILESYSTEM`` (true), ``KUBEFAL_GATEWAY_NAMESPACE``
        (the operator's namespace) and ``KUBEFAL_GATEWAY_POD_LABELS`` (``k=v,k=v``; default
        ``app.kubernetes.io/part-of=kubefal,app.kubernetes.io/component=gateway``) for the
        runners' NetworkPolicy, ``KUBEFAL_RUNNER_FAL_RUN_HOST`` /
        ``KUBEFAL_RUNNER_FAL_QUEUE_RUN_HOST`` (unset) for fal_client inside runners,
        ``KUBEFAL_RUNNER_FAL_REST_HOST`` (unset) for fal.toolkit uploads inside runners,
        ``KUBEFAL_RUNNER_KEYS`` (on when that is set) and ``KUBEFAL_KEY_NAMESPACE`` (the
        gateway's namespace) for the storage-only key each runner gets (``runner_keys``),
        ``KUBEFAL_RUNNER_DATA_VOLUME`` (unset; JSON volume source) for persistentData's /data,
        ``KUBEFAL_RUNNER_ANNOUNCE_URL`` (default: ``KUBEFAL_GATEWAY_ADMIN_URL`` plus
        ``/_kubefal/runners/ready``; ``off`` disables it) where runners announce readiness, and
        ``KUBEFAL_GATEWAY_CA_FILE`` (unset; a missing file means no CA) for the CA that
        signed the gateway's certificate.
        """
        env = os.environ if environ is None else environ
        namespace = env.get("KUBEFAL_OPERATOR_NAMESPACE", "kubefal-system")
        defaults = common.RenderSettings()
        return cls(
            namespace=namespace,
            catalogue_namespace=env.get("KUBEFAL_MACHINES_NAMESPACE", namespace),
            catalogue_name=env.get(
                "KUBEFAL_MACHINES_CONFIGMAP", naming.MACHINE_CATALOGUE_CONFIGMAP
            ),
            gateway_admin_token=env.get(signals.ADMIN_TOKEN_ENV) or None,
            metrics_host=env.get("KUBEFAL_OPERATOR_METRICS_HOST", "0.0.0.0"),
            metrics_port=int(env.get("KUBEFAL_OPERATOR_METRICS_PORT", "8000")),
            render=common.RenderSettings(
                runner_image=env.get("KUBEFAL_RUNNER_IMAGE", defaults.runner_image),
                drain_margin_seconds=int(
                    env.get("KUBEFAL_DRAIN_MARGIN_SECONDS", str(defaults.drain_margin_seconds))
                ),
                keda_scaler_address=env.get(
                    "KUBEFAL_KEDA_SCALER_ADDRESS",
                    f"kubefal-gateway-admin.{namespace}.svc:{KEDA_SCALER_PORT}",
                ),
                keda_polling_interval_seconds=int(
                    env.get(
                        "KUBEFAL_KEDA_POLLING_INTERVAL",
                        str(defaults.keda_polling_interval_seconds),
                    )
                ),
                runner_run_as_user=_user_id(
                    env, "KUBEFAL_RUNNER_RUN_AS_USER", defaults.runner_run_as_user
                ),
                runner_run_as_group=_user_id(
                    env, "KUBEFAL_RUNNER_RUN_AS_GROUP", defaults.runner_run_as_group
                ),
                runner_read_only_root_filesystem=_boolean(
                    env,
                    "KUBEFAL_RUNNER_READ_ONLY_ROOT_FILESYSTEM",
                    defaults.runner_read_only_root_filesystem,
                ),
                gateway_namespace=env.get("KUBEFAL_GATEWAY_NAMESPACE") or namespace,
                gateway_pod_labels=_labels(
                    env, "KUBEFAL_GATEWAY_POD_LABELS", defaults.gateway_pod_labels
                ),
                fal_run_host=env.get("KUBEFAL_RUNNER_FAL_RUN_HOST") or None,
                fal_queue_run_host=env.get("KUBEFAL_RUNNER_FAL_QUEUE_RUN_HOST") or None,
                fal_rest_host=env.get("KUBEFAL_RUNNER_FAL_REST_HOST") or None,
                data_volume=_data_volume(env.get("KUBEFAL_RUNNER_DATA_VOLUME", "")),
                gateway_ca_pem=_read_ca(env.get("KUBEFAL_GATEWAY_CA_FILE") or None),
                runner_announce_url=_announce_url(env),
            ),
            gateway_admin_url=env.get("KUBEFAL_GATEWAY_ADMIN_URL") or None,
            build=_build_settings(env, runner_user=defaults.runner_run_as_user),
            runner_keys=_boolean(
                env, "KUBEFAL_RUNNER_KEYS", bool(env.get("KUBEFAL_RUNNER_FAL_REST_HOST"))
            ),
            key_namespace=env.get("KUBEFAL_KEY_NAMESPACE")
            or env.get("KUBEFAL_GATEWAY_NAMESPACE")
            or namespace,
            actuator_interval_seconds=float(env.get("KUBEFAL_ACTUATOR_INTERVAL", "0.15")),
            gateway=status.Gateway(
                queue_url=env.get(
                    "KUBEFAL_GATEWAY_QUEUE_URL", f"http://kubefal-gateway-queue.{namespace}.svc"
                ),
                run_url=env.get(
                    "KUBEFAL_GATEWAY_RUN_URL", f"http://kubefal-gateway-run.{namespace}.svc"
                ),
            ),
        )


class ConfigError(ValueError):
    """An environment variable of the operator has a value it cannot use."""


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
LABEL_KEY_PATTERN = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
MAX_CA_BYTES = 256 * 1024
"""A CA bundle larger than this is a configuration mistake (it lands in every runner pod)."""


def _build_settings(env: Mapping[str, str], *, runner_user: int) -> build.BuildSettings:
    user = _user_id(env, "KUBEFAL_RUNNER_RUN_AS_USER", runner_user)
    try:
        return build.BuildSettings.from_environment(env, runner_user=user)
    except build.BuildSettingsError as error:
        raise ConfigError(str(error)) from None


def _boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r}: expected true or false")


def _user_id(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or not 1 <= int(value) <= 2**31 - 1:
        raise ConfigError(f"{name}={value!r}: expected a non-root numeric id (1 or more)")
    return int(value)


def _labels(
    env: Mapping[str, str], name: str, default: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    value = env.get(name, "").strip()
    if not value:
        return default
    labels: dict[str, str] = {}
    for item in value.split(","):
        key, separator, label_value = item.strip().partition("=")
        if (
            not separator
            or not LABEL_KEY_PATTERN.match(key)
            or not LABEL_VALUE_PATTERN.match(label_value)
        ):
            raise ConfigError(f"{name}: {item!r} is not a label key=value")
        labels[key] = label_value
    return tuple(sorted(labels.items()))


DATA_VOLUME_SOURCES = frozenset(
    {"nfs", "hostPath", "csi", "persistentVolumeClaim", "cephfs", "glusterfs", "azureFile"}
)


def _data_volume(value: str) -> str | None:
    """``KUBEFAL_RUNNER_DATA_VOLUME``: one volume source as JSON, normalised; None if unset."""
    if not value.strip():
        return None
    try:
        source = json.loads(value)
    except ValueError:
        raise ConfigError("KUBEFAL_RUNNER_DATA_VOLUME: not JSON") from None
    if (
        not isinstance(source, dict)
        or len(source) != 1
        or next(iter(source)) not in DATA_VOLUME_SOURCES
        or not isinstance(next(iter(source.values())), dict)
    ):
        raise ConfigError(
            "KUBEFAL_RUNNER_DATA_VOLUME: expected one volume source, one of "
            + ", ".join(sorted(DATA_VOLUME_SOURCES))
        )
    return json.dumps(source, sort_keys=True)


def runner_announce_url(admin_url: str | None) -> str | None:
    """Where runners announce readiness: the gateway admin listener's announce path."""
    return None if not admin_url else admin_url.rstrip("/") + naming.RUNNER_ANNOUNCE_PATH


def _announce_url(env: Mapping[str, str]) -> str | None:
    """``KUBEFAL_RUNNER_ANNOUNCE_URL`` (``off`` disables announcing), else derived from
    ``KUBEFAL_GATEWAY_ADMIN_URL`` (unset too: runners do not announce)."""
    explicit = env.get("KUBEFAL_RUNNER_ANNOUNCE_URL", "").strip()
    if explicit.lower() == "off":
        return None
    return explicit or runner_announce_url(env.get("KUBEFAL_GATEWAY_ADMIN_URL") or None)


def _read_ca(path: str | None) -> str | None:
    """The PEM text of the gateway's CA, or None when no file is configured or present."""
    if path is None:
        return None
    ca_file = pathlib.Path(path)
    if not ca_file.is_file():
        return None
    text = ca_file.read_bytes()[: MAX_CA_BYTES + 1].decode("ascii", "replace")
    if len(text) > MAX_CA_BYTES or "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(f"KUBEFAL_GATEWAY_CA_FILE={path}: not a PEM certificate bundle")
    return text.strip() + "\n"
