"""The machine catalogue ConfigMap with fal's defaults (what a fresh install starts from)."""

from __future__ import annotations

from kubefal_api import machines, naming
from kubefal_operator.render import common


def catalogue_config_map(
    *,
    namespace: str,
    name: str = naming.MACHINE_CATALOGUE_CONFIGMAP,
    catalogue: machines.MachineCatalogue | None = None,
) -> common.Manifest:
    """A ConfigMap holding ``catalogue`` (the defaults when None)."""
    chosen = catalogue if catalogue is not None else machines.default_catalogue()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                naming.LABEL_PART_OF: naming.PART_OF,
                naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
                naming.LABEL_COMPONENT: "machine-catalogue",
            },
        },
        "data": machines.configmap_data(chosen),
    }
