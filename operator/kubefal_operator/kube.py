"""The one module of the operator that talks to the Kubernetes API.

kopf watches and dispatches; everything the operator *writes* (children, replicas, status,
Events) goes through :class:`KubeClient`, so the API surface of the operator is this file.
Writes use server-side apply (``PATCH application/apply-patch+yaml`` with a fixed field
manager and ``force``): one idempotent call whether or not the object exists, no
create/409/update dance, and a hand edit of a field the operator owns is overwritten on the
next apply. Killing the operator mid-way and starting it again converges to the same
objects: names are deterministic and an apply of the same manifest is a no-op.

The client is aiohttp (already loaded by kopf, so it costs no extra memory) driven by the
credentials the ``kubernetes`` package resolves from KUBECONFIG or the in-cluster service
account (client certificates, bearer tokens, exec plugins with refresh).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import ssl
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp
import kubernetes.client
import kubernetes.config

from kubefal_api import v1alpha1

Manifest = dict[str, Any]

FIELD_MANAGER: Final = "kubefal-operator"
"""Field manager of every child field the operator renders (except replicas)."""
REPLICAS_FIELD_MANAGER: Final = "kubefal-replicas"
"""Field manager of a Deployment's ``spec.replicas`` when the operator sets it.

Kept apart from :data:`FIELD_MANAGER` so the main apply can leave ``replicas`` out without
server-side apply deleting the field (and the Deployment defaulting to one replica): the
field stays owned by this manager or by whichever scaler took it over.
"""
BOUNDS_FIELD_MANAGER: Final = "kubefal-bounds"
"""Field manager of ``spec.replicas`` when the operator only clamped another scaler's count
into the FalApp's bounds: a write takes the field away from its previous manager, and this
name (not one of the operator's own) keeps the record that someone else scales the app."""
EVENT_SOURCE: Final = "kubefal-operator"
LIST_PAGE_SIZE: Final = 500
"""Objects per page of a LIST (the start-up pre-listing of every FalApp and child)."""

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ResourceKind:
    """Where a kind lives in the REST API."""

    api_version: str
    kind: str
    plural: str

    @property
    def group(self) -> str:
        """The API group ("" for the core group)."""
        return self.api_version.rpartition("/")[0]

    @property
    def selector(self) -> tuple[str, str]:
        """How kopf names the resource (``kopf.on.event(*kind.selector)``, the keys of
        ``settings.watching``): group/version and plural."""
        return (self.api_version, self.plural)

    def collection(self, *, namespace: str | None) -> str:
        """The path of every object of this kind (in ``namespace``, or cluster-wide)."""
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        scope = f"/namespaces/{namespace}" if namespace else ""
        return f"{prefix}{scope}/{self.plural}"

    def path(self, *, namespace: str, name: str | None = None, subresource: str = "") -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        path = f"{prefix}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path


DEPLOYMENTS: Final = ResourceKind("apps/v1", "Deployment", "deployments")
SERVICES: Final = ResourceKind("v1", "Service", "services")
NETWORK_POLICIES: Final = ResourceKind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
POD_DISRUPTION_BUDGETS: Final = ResourceKind(
    "policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"
)
CONFIG_MAPS: Final = ResourceKind("v1", "ConfigMap", "configmaps")
SECRETS: Final = ResourceKind("v1", "Secret", "secrets")
"""Runner API keys (runner_keys.py) only."""
PODS: Final = ResourceKind("v1", "Pod", "pods")
NODES: Final = ResourceKind("v1", "Node", "nodes")
EVENTS: Final = ResourceKind("v1", "Event", "events")
FALAPPS: Final = ResourceKind(v1alpha1.API_VERSION, v1alpha1.KIND, v1alpha1.PLURAL)
SCALED_OBJECTS: Final = ResourceKind("keda.sh/v1alpha1", "ScaledObject", "scaledobjects")
JOBS: Final = ResourceKind("batch/v1", "Job", "jobs")
"""Build Jobs of spec.containerImage (kubefal_operator.build)."""
HORIZONTAL_POD_AUTOSCALERS: Final = ResourceKind(
    "autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"
)

CHILDREN: Final[Mapping[str, ResourceKind]] = {
    kind.kind: kind
    for kind in (
        DEPLOYMENTS,
        SERVICES,
        NETWORK_POLICIES,
        POD_DISRUPTION_BUDGETS,
        SCALED_OBJECTS,
        HORIZONTAL_POD_AUTOSCALERS,
    )
}
"""Every kind of child a FalApp has, by kind: watched, kept in memory, repaired on drift."""

WATCHED: Final[tuple[ResourceKind, ...]] = (
    FALAPPS,
    *CHILDREN.values(),
    PODS,
    NODES,
    CONFIG_MAPS,
    JOBS,
)
"""Every kind the operator watches (the chart's RBAC grants list and watch on exactly these)."""

KINDS: Final[Mapping[tuple[str, str], ResourceKind]] = {
    (kind.api_version, kind.kind): kind
    for kind in (
        DEPLOYMENTS,
        SERVICES,
        NETWORK_POLICIES,
        POD_DISRUPTION_BUDGETS,
        CONFIG_MAPS,
        SECRETS,
        PODS,
        EVENTS,
        FALAPPS,
        SCALED_OBJECTS,
        HORIZONTAL_POD_AUTOSCALERS,
        JOBS,
    )
}


class ApiError(Exception):
    """The API server answered with an error status; ``status`` and ``reason`` say which."""

    def __init__(self, *, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def namespace_terminating(self) -> bool:
        """The namespace is being deleted: nothing new may be created in it."""
        return self.status == 403 and "being terminated" in self.message


def kind_of(manifest: Mapping[str, Any]) -> ResourceKind:
    """The REST location of a manifest's kind (only the kinds the operator manages)."""
    key = (str(manifest["apiVersion"]), str(manifest["kind"]))
    try:
        return KINDS[key]
    except KeyError:
        raise ValueError(f"the operator does not manage {key[1]} ({key[0]})") from None


@dataclasses.dataclass(frozen=True)
class Credentials:
    """How to reach and authenticate to the API server."""

    server: str
    ssl_context: ssl.SSLContext | bool
    authorization: Callable[[], str | None]
    """Returns the Authorization header value, refreshing expiring tokens."""


def load_credentials() -> Credentials:
    """Credentials from KUBECONFIG (or ~/.kube/config), else from the pod's service account."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    except kubernetes.config.ConfigException:
        kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    context: ssl.SSLContext | bool
    if configuration.verify_ssl:
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file and configuration.key_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
    else:
        context = False

    def authorization() -> str | None:
        token = configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        return str(token) if token else None

    return Credentials(
        server=str(configuration.host).rstrip("/"),
        ssl_context=context,
        authorization=authorization,
    )


class KubeClient:
    """Async access to the API for the handful of calls the operator makes."""

    def __init__(self, *, credentials: Credentials, session: aiohttp.ClientSession) -> None:
        self._credentials = credentials
        self._session = session

    @classmethod
    def connect(cls, credentials: Credentials | None = None) -> KubeClient:
        """A client with its own connection pool; call :meth:`close` when done."""
        resolved = credentials if credentials is not None else load_credentials()
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=resolved.ssl_context, limit=64),
            # sock_connect, not connect: aiohttp's connect timeout also runs while a request
            # waits for a free pooled connection, and a restart re-checking 1,000 apps queues
            # hundreds of requests behind the 64 connections for longer than 10 s.
            timeout=aiohttp.ClientTimeout(total=60, sock_connect=10),
        )
        return cls(credentials=resolved, session=session)

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Manifest:
        """One API call; returns the decoded body, raises :class:`ApiError` on errors."""
        headers = {"Accept": "application/json"}
        token = self._credentials.authorization()
        if token:
            headers["Authorization"] = token
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body, separators=(",", ":"))
        async with self._session.request(
            method,
            self._credentials.server + path,
            params=params,
            data=data,
            headers=headers,
        ) as response:
            text = await response.text()
            if response.status >= 400:
                try:
                    failure = json.loads(text)
                except ValueError:
                    failure = {"reason": response.reason or "", "message": text}
                raise ApiError(
                    status=response.status,
                    reason=str(failure.get("reason", "")),
                    message=str(failure.get("message", text)),
                )
            decoded: Manifest = json.loads(text) if text else {}
            return decoded

    async def apply(
        self, manifest: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER
    ) -> Manifest:
        """Server-side apply ``manifest`` (created when absent); returns the live object."""
        kind = kind_of(manifest)
        metadata = manifest["metadata"]
        return await self._request(
            "PATCH",
            kind.path(namespace=metadata["namespace"], name=metadata["name"]),
            params={"fieldManager": field_manager, "force": "true"},
            body=manifest,
            content_type="application/apply-patch+yaml",  # JSON is YAML
        )

    async def get(self, kind: ResourceKind, *, namespace: str, name: str) -> Manifest | None:
        """The live object, or None when there is none."""
        try:
            return await self._request("GET", kind.path(namespace=namespace, name=name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def list(
        self, kind: ResourceKind, *, namespace: str | None, label_selector: str = ""
    ) -> list[Manifest]:
        """Every object of ``kind`` in ``namespace`` (None: cluster-wide), in pages of
        :data:`LIST_PAGE_SIZE` so one response stays small however many objects there are."""
        items: list[Manifest] = []
        params = {"limit": str(LIST_PAGE_SIZE)}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            listing = await self._request(
                "GET", kind.collection(namespace=namespace), params=params
            )
            items.extend(listing.get("items") or [])
            token = (listing.get("metadata") or {}).get("continue")
            if not token:
                return items
            params = {**params, "continue": str(token)}

    async def delete(
        self, kind: ResourceKind, *, namespace: str, name: str, uid: str | None = None
    ) -> bool:
        """Delete (in the background); False when it was already gone."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        try:
            await self._request("DELETE", kind.path(namespace=namespace, name=name), body=options)
        except ApiError as error:
            # 404: already gone; 409: the uid precondition failed, a newer object took the name
            if error.status in {404, 409}:
                return False
            raise
        return True

    async def annotate(
        self, kind: ResourceKind, *, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> Manifest | None:
        """Set annotations of an existing object (a JSON merge patch); None when it is gone.

        Not an apply: applying a pod that was deleted meanwhile would try to create it.
        """
        try:
            return await self._request(
                "PATCH",
                kind.path(namespace=namespace, name=name),
                body={"metadata": {"annotations": dict(annotations)}},
                content_type="application/merge-patch+json",
            )
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def patch_status(
        self, kind: ResourceKind, *, namespace: str, name: str, status: Mapping[str, Any]
    ) -> Manifest | None:
        """Replace ``status`` through the status subresource (a JSON merge patch)."""
        try:
            return await self._request(
                "PATCH",
                kind.path(namespace=namespace, name=name, subresource="status"),
                body={"status": status},
                content_type="application/merge-patch+json",
            )
        except ApiError as error:
            if error.status == 404:  # deleted meanwhile: nothing to report on
                return None
            raise

    async def post_event(
        self,
        *,
        involved: Mapping[str, Any],
        event_type: str,
        reason: str,
        message: str,
        now: datetime.datetime,
    ) -> None:
        """Record a core/v1 Event on ``involved`` (what ``kubectl describe`` shows)."""
        metadata = involved["metadata"]
        timestamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": metadata["namespace"],
            },
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata.get("uid"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
            "reportingInstance": EVENT_SOURCE,
            "firstTimestamp": timestamp,
            "lastTimestamp": timestamp,
            "count": 1,
        }
        try:
            await self._request("POST", EVENTS.path(namespace=metadata["namespace"]), body=event)
        except (ApiError, aiohttp.ClientError) as error:  # an Event is never worth a retry loop
            logger.warning("could not post event %s on %s: %s", reason, metadata["name"], error)
