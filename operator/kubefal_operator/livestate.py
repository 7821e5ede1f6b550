"""What the operator knows about the cluster: the live children and runner pods of each FalApp
(`LiveState`), the in-memory stores they come from (`Indexes`, filled by ``cache``), the slimmed
copies those stores keep (`object_view`, `pod_view`), and the machine catalogue in force.

Why a module of its own: these are plain data and pure functions, read by the runtime, the
reconcile, the actuator and the triggers alike; none of them talks to the API.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import pydantic

from kubefal_api import machines, naming
from kubefal_operator.render import replicas, scalers

logger = logging.getLogger(__name__)


Manifest = dict[str, Any]


Key = tuple[str, str]
"""(namespace, FalApp name)."""


IndexView = Mapping[Key, Collection[Mapping[str, Any]]]
"""A store of ``cache`` as the reconciler sees it: values grouped by key."""


CHILD_NAMES: Mapping[str, Callable[[str], str]] = {
    "Deployment": naming.deployment_name,
    "Service": naming.service_name,
    "NetworkPolicy": naming.network_policy_name,
    "PodDisruptionBudget": naming.pod_disruption_budget_name,
    scalers.SCALED_OBJECT: naming.scaled_object_name,
    scalers.HORIZONTAL_POD_AUTOSCALER: naming.horizontal_pod_autoscaler_name,
}
"""How each child kind is named after its FalApp."""


@dataclasses.dataclass(frozen=True)
class LiveState:
    """The live children and runner pods of one FalApp."""

    children: Mapping[str, Mapping[str, Any]]
    """Live child by kind."""
    pods: Sequence[Mapping[str, Any]]
    node_labels: Mapping[str, Mapping[str, str]]

    @property
    def deployment(self) -> Mapping[str, Any] | None:
        return self.children.get("Deployment")

    def replace(self, kind: str, child: Mapping[str, Any] | None) -> LiveState:
        """This state with the live ``kind`` child replaced (None: it is gone)."""
        updated = {k: v for k, v in self.children.items() if k != kind}
        if child is not None:
            updated[kind] = child
        return dataclasses.replace(self, children=updated)


@dataclasses.dataclass(frozen=True)
class Indexes:
    """The in-memory stores of FalApps, children, runner pods and nodes."""

    falapps: IndexView
    children: Mapping[str, IndexView]
    """A store per child kind (the kinds of `CHILD_NAMES`)."""
    pods: IndexView
    nodes: Mapping[str, Collection[Mapping[str, str]]]

    def app(self, key: Key) -> Mapping[str, Any] | None:
        return next(iter(self.falapps.get(key, ())), None)

    def apps(self) -> list[Mapping[str, Any]]:
        return [body for store in self.falapps.values() for body in store]

    def live(self, key: Key) -> LiveState:
        found = {
            kind: child
            for kind, index in self.children.items()
            if (child := next(iter(index.get(key, ())), None)) is not None
        }
        node_labels = {
            name: labels for name, store in self.nodes.items() for labels in list(store)[:1]
        }
        return LiveState(children=found, pods=list(self.pods.get(key, ())), node_labels=node_labels)


def pod_view(pod: Mapping[str, Any]) -> Manifest:
    """The parts of a runner pod the status and the actuator need (what the pod index keeps
    in memory): its state, its IP (how the gateway knows it) and its deletion cost."""
    meta = pod.get("metadata", {})
    pod_status = pod.get("status", {})
    cost = (meta.get("annotations") or {}).get(naming.ANNOTATION_POD_DELETION_COST)
    return {
        "metadata": {
            "name": meta.get("name"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
            "annotations": {} if cost is None else {naming.ANNOTATION_POD_DELETION_COST: cost},
        },
        "spec": {"nodeName": pod.get("spec", {}).get("nodeName")},
        "status": {
            "phase": pod_status.get("phase"),
            "podIP": pod_status.get("podIP"),
            "conditions": list(pod_status.get("conditions") or []),
            "containerStatuses": list(pod_status.get("containerStatuses") or []),
        },
    }


LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"


def object_view(obj: Mapping[str, Any]) -> Manifest:
    """An object as the reconciler keeps it in memory: without the bulky bookkeeping.

    ``managedFields`` is reduced to the managers that own ``spec.replicas`` (all the
    replicas rule reads) and kubectl's last-applied copy is dropped: together they are
    most of an object's size, and every FalApp, child and cached apply response is held.
    """
    meta = dict(obj.get("metadata") or {})
    managed = meta.pop("managedFields", None)
    if managed:
        owners = replicas.replicas_owners({"metadata": {"managedFields": managed}})
        if owners:
            meta["managedFields"] = [
                {"manager": owner, "fieldsV1": {"f:spec": {"f:replicas": {}}}}
                for owner in sorted(owners)
            ]
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED_ANNOTATION in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED_ANNOTATION}
    return {**obj, "metadata": meta}


def app_key(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return (str(meta["namespace"]), str(meta["name"]))


def owner_key(child: Mapping[str, Any]) -> Key | None:
    """The FalApp a child or runner pod belongs to, by its ``kubefal.io/app`` label."""
    meta = child.get("metadata", {})
    name = (meta.get("labels") or {}).get(naming.LABEL_APP)
    namespace = meta.get("namespace")
    return (str(namespace), str(name)) if name and namespace else None


@dataclasses.dataclass
class CatalogueState:
    """The machine catalogue in force and where it came from."""

    catalogue: machines.MachineCatalogue
    source: str

    def replace(self, catalogue: machines.MachineCatalogue, *, source: str) -> set[str]:
        """Install ``catalogue``; returns the names of the types that changed."""
        old, new = self.catalogue.machine_types, catalogue.machine_types
        changed = {name for name in old.keys() | new.keys() if old.get(name) != new.get(name)}
        if (self.catalogue.gpu_resource, self.catalogue.gpu_product_label) != (
            catalogue.gpu_resource,
            catalogue.gpu_product_label,
        ):
            changed = set(old.keys() | new.keys())
        self.catalogue, self.source = catalogue, source
        return changed


def parse_catalogue(
    config_map: Mapping[str, Any] | None, *, where: str
) -> tuple[machines.MachineCatalogue, str]:
    """The catalogue in a ConfigMap, or the built-in defaults when it is absent or invalid."""
    if config_map is None:
        logger.warning("machine catalogue ConfigMap %s not found: using built-in defaults", where)
        return machines.default_catalogue(), "built-in defaults"
    try:
        return machines.load_from_configmap_data(config_map.get("data") or {}), where
    except (KeyError, ValueError, pydantic.ValidationError) as error:
        logger.error("machine catalogue %s is invalid, using built-in defaults: %s", where, error)
        return machines.default_catalogue(), "built-in defaults"


def child_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata", {})
    return (str(obj.get("kind", "")), str(meta.get("namespace")), str(meta.get("name")))


def resource_version(obj: Mapping[str, Any]) -> int:
    value = str(obj.get("metadata", {}).get("resourceVersion", "0"))
    return int(value) if value.isdigit() else 0
