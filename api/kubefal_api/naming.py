"""Names, labels, annotations and the finalizer that tie a FalApp to its children.

The operator stamps these on every child; the gateway selects runner pods by them; the CLI
lists by them. One module keeps every spelling in one place.

Every child of a FalApp is named after it (a Deployment, a Service, a NetworkPolicy, ... all
called ``<falapp name>``): kinds differ, so names cannot collide, and ``kubectl get
deploy,svc <name>`` finds them all. The CRD restricts FalApp names to DNS-1035 labels of at
most 63 characters, which every child kind accepts.
"""

from __future__ import annotations

from typing import Final

from kubefal_api import v1alpha1

MAX_APP_NAME_LENGTH: Final = v1alpha1.MAX_APP_NAME_LENGTH
"""A FalApp name is a DNS-1035 label, because its Service carries the same name."""
APP_NAME_PATTERN: Final = v1alpha1.APP_NAME_PATTERN

LABEL_APP: Final = f"{v1alpha1.GROUP}/app"
"""On every child and every runner pod: the FalApp's name."""
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "kubefal"
"""Value of ``app.kubernetes.io/managed-by`` on everything the operator creates."""
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
PART_OF: Final = "kubefal"
LABEL_BUILD_OF: Final = f"{v1alpha1.GROUP}/build-of"
"""On an image build's Job, its pods and its build-secrets Secret: the FalApp the image is for."""
COMPONENT_RUNNER: Final = "runner"
"""``app.kubernetes.io/component`` of runner pods."""
COMPONENT_GATEWAY: Final = "gateway"
"""``app.kubernetes.io/component`` of gateway pods; the runners' NetworkPolicy admits them."""

ANNOTATION_SPEC_HASH: Final = f"{v1alpha1.GROUP}/spec-hash"
"""On the Deployment's pod template: hash of everything rendered from the FalApp spec."""
ANNOTATION_CATALOGUE_HASH: Final = f"{v1alpha1.GROUP}/catalogue-hash"
"""On the Deployment: hash of the machine catalogue entries the app uses."""
ANNOTATION_MACHINE_TYPES: Final = f"{v1alpha1.GROUP}/machine-types"
"""On runner pods: the ordered machine types, comma-separated."""
ANNOTATION_POD_DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"
"""Set on idle runners so a scale-down removes them first."""

FINALIZER: Final = f"{v1alpha1.GROUP}/cleanup"
"""Finalizer the operator puts on a FalApp to clean up what owner references cannot reach."""

RUNNER_CONTAINER: Final = "runner"
"""Name of the container that runs the app in a runner pod."""

DEFAULT_MACHINE_TYPE: Final = v1alpha1.DEFAULT_MACHINE_TYPE
"""The machine type of a FalApp that names none (``spec.machineTypes`` defaults to it)."""

RESERVED_PATH_PREFIX: Final = "/_kubefal"
"""Paths of kubefal's own endpoints on a runner and on the gateway's admin listener; a caller's
request to an app never reaches a runner path under it."""
RUNNER_READY_PATH: Final = f"{RESERVED_PATH_PREFIX}/ready"
"""On a runner: 200 once ``setup()`` finished (the startup and readiness probes, and the
gateway's own readiness probe), 503 before."""
RUNNER_HEALTH_PATH: Final = f"{RESERVED_PATH_PREFIX}/health"
"""On a runner: the app's health check as fal runs it (the liveness probe)."""
RUNNER_ANNOUNCE_PATH: Final = f"{RESERVED_PATH_PREFIX}/runners/ready"
"""Path on the gateway's admin listener where a runner that finished setup() announces itself
(the operator renders the URL into ``KUBEFAL_GATEWAY_ANNOUNCE_URL``; the body is
`kubefal_api.messages.RunnerAnnouncement`)."""
SCALING_WATCH_PATH: Final = f"{RESERVED_PATH_PREFIX}/scaling/watch"
"""Path on the gateway's admin listener of the scaling signals (server-sent events, each a
`kubefal_api.messages.ScalingSignal`), which the operator's builtin actuator follows."""

MACHINE_CATALOGUE_CONFIGMAP: Final = "kubefal-machines"
"""ConfigMap (in the operator's namespace) holding the machine catalogue."""
MACHINE_CATALOGUE_KEY: Final = "machines.yaml"
"""Data key of that ConfigMap."""


def app_id(namespace: str, name: str) -> str:
    """The gateway's id of an app, ``{namespace}/{name}`` (also its URL path)."""
    return f"{namespace}/{name}"


def deployment_name(app_name: str) -> str:
    """Name of the runner Deployment of a FalApp."""
    return app_name


def service_name(app_name: str) -> str:
    """Name of the (headless) Service of a FalApp's runners."""
    return app_name


def network_policy_name(app_name: str) -> str:
    """Name of the NetworkPolicy that admits only the gateway to the runners."""
    return app_name


def pod_disruption_budget_name(app_name: str) -> str:
    """Name of the PodDisruptionBudget (present when minConcurrency >= 2)."""
    return app_name


def scaled_object_name(app_name: str) -> str:
    """Name of the KEDA ScaledObject (scaler ``keda``)."""
    return app_name


def horizontal_pod_autoscaler_name(app_name: str) -> str:
    """Name of the HorizontalPodAutoscaler (scaler ``hpa``)."""
    return app_name


def build_secret_name(app_name: str) -> str:
    """The Secret holding a ContainerImage app's build secrets (``kubefal deploy`` and
    ``fal deploy`` write it; ``spec.containerImage.secretRef`` names it). A Secret's name may
    be 253 characters, so the app's whole name fits: two apps sharing a long prefix keep a
    Secret each."""
    return f"{app_name}-build-secrets"


def owner_reference(app_name: str, uid: str, *, controller: bool = False) -> dict[str, object]:
    """An owner reference to the FalApp ``app_name``: the garbage collector deletes the object
    with the app. ``controller``: the app is its managing controller (the operator's children,
    the build secrets), which also blocks the app's foreground deletion until it is gone."""
    reference: dict[str, object] = {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "name": app_name,
        "uid": uid,
    }
    if controller:
        reference.update(controller=True, blockOwnerDeletion=True)
    return reference


def runner_selector(app_name: str) -> dict[str, str]:
    """Labels that select the runner pods of a FalApp (the Deployment's immutable selector)."""
    return {LABEL_APP: app_name, LABEL_COMPONENT: COMPONENT_RUNNER}


def child_labels(app_name: str) -> dict[str, str]:
    """Labels on every child object and runner pod of a FalApp."""
    return {
        LABEL_APP: app_name,
        LABEL_NAME: app_name,
        LABEL_COMPONENT: COMPONENT_RUNNER,
        LABEL_PART_OF: PART_OF,
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def gateway_selector() -> dict[str, str]:
    """Labels of the gateway pods (any namespace) that may reach runners."""
    return {LABEL_PART_OF: PART_OF, LABEL_COMPONENT: COMPONENT_GATEWAY}
