"""What every rendered child shares: metadata, the owner reference, and content hashes.

Children carry the FalApp's labels and a controller owner reference, so the garbage
collector removes them with the FalApp and ``kubectl get all -l kubefal.io/app=<name>``
finds them. Hashes are of canonical JSON, so the same input always gives the same value
across processes and restarts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from kubefal_api import naming, v1alpha1

Manifest = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RenderSettings:
    """Cluster-wide choices that are not part of a FalApp (set by the operator's config)."""

    runner_image: str = "ghcr.io/kubefal/kubefal-runner:0.1.0"
    """Image of the generic runner, used when ``spec.image`` is unset."""
    runner_port: int = 8080
    """Port the runner serves the app on (named ``http``)."""
    metrics_port: int = 9090
    """Port the runner serves Prometheus metrics on (named ``metrics``)."""
    drain_margin_seconds: int = 30
    """Added to ``requestTimeout`` for the termination grace period: time to stop being
    ready, run ``teardown()`` and exit after the last request finished."""
    app_mount_path: str = "/app"
    """Where the source ConfigMap is mounted in the runner container."""
    keda_scaler_address: str = "kubefal-gateway-admin.kubefal-system.svc:9091"
    """``host:port`` of the gateway's KEDA external scaler (``spec.scaler: keda``): the
    chart's gateway admin Service (release ``kubefal``), which carries the ``grpc-keda`` port."""
    keda_polling_interval_seconds: int = 5
    """ScaledObject ``pollingInterval``: how often KEDA asks ``IsActive`` besides the push."""
    runner_run_as_user: int = 10001
    """UID runner containers run as (the runner image's ``runner`` user); never root."""
    runner_run_as_group: int = 10001
    """GID runner containers run as, also their ``fsGroup`` (owner of mounted volumes)."""
    runner_read_only_root_filesystem: bool = True
    """Mount the runner's root filesystem read-only; ``/tmp`` and the requirements cache are
    writable emptyDir volumes."""
    gateway_namespace: str = "kubefal-system"
    """Namespace of the gateway pods: the only namespace the runners' NetworkPolicy admits
    traffic to the app port from."""
    gateway_pod_labels: tuple[tuple[str, str], ...] = tuple(
        sorted(naming.gateway_selector().items())
    )
    """Labels that select the gateway's own pods in ``gateway_namespace``."""
    fal_run_host: str | None = None
    """``FAL_RUN_HOST`` of runner pods (``host[:port]`` of the gateway's run API inside the
    cluster), so an app calling another app with fal_client stays on this cluster; None
    leaves it unset."""
    fal_queue_run_host: str | None = None
    """``FAL_QUEUE_RUN_HOST`` of runner pods (the gateway's queue API); None leaves it unset."""
    fal_rest_host: str | None = None
    """``FAL_REST_HOST`` of runner pods (the gateway's REST listener, ``--rest-port``), so
    ``fal.toolkit`` uploads (``Image.from_pil``, ``File.from_bytes``) land in this cluster's
    file store (docs/fal-storage.md); they also need a FAL_KEY (``falKeySecretRef``) of the
    app's namespace. None leaves it unset."""
    data_volume: str | None = None
    """JSON of the Kubernetes volume source (``{"nfs": {...}}``, ``{"hostPath": {...}}``,
    ``{"csi": {...}}``, ``{"persistentVolumeClaim": {...}}``) holding every namespace's /data;
    a FalApp with ``persistentData`` mounts its namespace's subdirectory of it at /data, the
    gateway mounts the whole of it at ``--data-root``. None: /data is an emptyDir (not kept)."""
    runner_announce_url: str | None = None
    """``KUBEFAL_GATEWAY_ANNOUNCE_URL`` of runner pods: where a runner that finished setup()
    tells the gateway it is ready (the admin listener's ``/_kubefal/runners/ready``), sent from
    its pod IP (``KUBEFAL_POD_IP``, from the downward API, as ``KUBEFAL_POD_NAME``). None: the
    runner does not announce and the gateway learns of it from the Pod watch."""
    gateway_ca_pem: str | None = None
    """PEM CA that signed the gateway's certificate, handed to runners (``KUBEFAL_GATEWAY_CA``),
    which trust it besides the usual CAs; None when the gateway's certificate needs no extra
    trust."""


@dataclasses.dataclass(frozen=True)
class Owner:
    """The FalApp a child belongs to."""

    name: str
    namespace: str
    uid: str
    generation: int

    @classmethod
    def of(cls, app: v1alpha1.FalApp) -> Owner:
        meta = app.metadata
        if not meta.name or not meta.namespace or not meta.uid:
            raise ValueError("a FalApp needs metadata.name, namespace and uid to own children")
        return cls(
            name=meta.name,
            namespace=meta.namespace,
            uid=meta.uid,
            generation=meta.generation or 0,
        )

    def reference(self) -> Manifest:
        """A controller owner reference: the garbage collector deletes the child with us."""
        return naming.owner_reference(self.name, self.uid, controller=True)


def metadata(owner: Owner, *, name: str, annotations: dict[str, str] | None = None) -> Manifest:
    """``metadata`` of a child: name, namespace, labels, owner reference."""
    meta: Manifest = {
        "name": name,
        "namespace": owner.namespace,
        "labels": naming.child_labels(owner.name),
        "ownerReferences": [owner.reference()],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def content_hash(value: Any) -> str:
    """A short stable hash of JSON-able ``value``."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
