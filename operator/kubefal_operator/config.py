"""The operator's settings, read once from the environment at start and passed down.

Every knob is an environment variable (what a Helm chart sets) with a default that fits a
standard install; ``python -m kubefal_operator`` flags override the process-level ones.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from kubefal_api import naming
from kubefal_operator import status
from kubefal_operator.render import common


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
    gateway_admin_url: str | None = None
    """The gateway's admin listener (KUBEFAL_GATEWAY_ADMIN_URL, flag --gateway-admin-url),
    e.g. ``http://kubefal-gateway-admin.kubefal-system.svc:9090``. When set, the builtin
    actuator follows its scaling signals; unset, replicas follow minConcurrency."""
    actuator_interval_seconds: float = 0.15
    """At most one replicas write per app per this interval (KUBEFAL_ACTUATOR_INTERVAL);
    bursts of signals converge to the latest one."""

    @property
    def actuated(self) -> bool:
        """True when the builtin actuator runs (a gateway admin URL is configured)."""
        return bool(self.gateway_admin_url)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if environ is None else environ
        namespace = env.get("KUBEFAL_OPERATOR_NAMESPACE", "kubefal-system")
        defaults = common.RenderSettings()
        return cls(
            namespace=namespace,
            catalogue_namespace=env.get("KUBEFAL_MACHINES_NAMESPACE", namespace),
            catalogue_name=env.get(
                "KUBEFAL_MACHINES_CONFIGMAP", naming.MACHINE_CATALOGUE_CONFIGMAP
            ),
            metrics_host=env.get("KUBEFAL_OPERATOR_METRICS_HOST", "0.0.0.0"),
            metrics_port=int(env.get("KUBEFAL_OPERATOR_METRICS_PORT", "8000")),
            render=common.RenderSettings(
                runner_image=env.get("KUBEFAL_RUNNER_IMAGE", defaults.runner_image),
                drain_margin_seconds=int(
                    env.get("KUBEFAL_DRAIN_MARGIN_SECONDS", str(defaults.drain_margin_seconds))
                ),
                keda_scaler_address=env.get(
                    "KUBEFAL_KEDA_SCALER_ADDRESS", defaults.keda_scaler_address
                ),
                keda_polling_interval_seconds=int(
                    env.get(
                        "KUBEFAL_KEDA_POLLING_INTERVAL",
                        str(defaults.keda_polling_interval_seconds),
                    )
                ),
            ),
            gateway_admin_url=env.get("KUBEFAL_GATEWAY_ADMIN_URL") or None,
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
