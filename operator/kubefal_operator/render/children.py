"""Every child of a FalApp in one call: the ones it wants and the kinds it must not have.

Order matters for the reconciler: the Deployment comes last, so by the time it carries the
new generation annotation every other child of that generation is applied (the scaler object
of ``spec.scaler`` included; a scaler briefly pointing at a Deployment that does not exist yet
only retries).
"""

from __future__ import annotations

import dataclasses

from kubefal_api import machines, v1alpha1
from kubefal_operator.render import common, deployment, disruption, network, scalers


@dataclasses.dataclass(frozen=True)
class Children:
    """What the cluster should hold for one FalApp."""

    wanted: tuple[common.Manifest, ...]
    """Manifests to apply, in order (Deployment last)."""
    unwanted: tuple[tuple[str, str], ...]
    """(apiVersion, kind) of children that must not exist (e.g. a PDB below two runners)."""

    @property
    def deployment(self) -> common.Manifest:
        return next(child for child in self.wanted if child["kind"] == "Deployment")


def children(
    app: v1alpha1.FalApp,
    *,
    catalogue: machines.MachineCatalogue,
    settings: common.RenderSettings,
) -> Children:
    """Render all children; raises ``machines.UnknownMachineTypeError`` for unknown types."""
    wanted: list[common.Manifest] = [
        network.service(app, settings=settings),
        network.network_policy(app, settings=settings),
    ]
    unwanted: list[tuple[str, str]] = []
    if disruption.wanted(app):
        wanted.append(disruption.pod_disruption_budget(app))
    else:
        unwanted.append(("policy/v1", "PodDisruptionBudget"))
    wanted_scalers, unwanted_scalers = scalers.scaler_objects(app, settings=settings)
    wanted.extend(wanted_scalers)
    unwanted.extend(unwanted_scalers)
    wanted.append(deployment.deployment(app, catalogue=catalogue, settings=settings))
    return Children(wanted=tuple(wanted), unwanted=tuple(unwanted))
