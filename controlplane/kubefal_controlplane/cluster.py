"""The Kubernetes API calls the control plane makes, and nothing else.

One :class:`Cluster` owns the ``kubernetes`` client (created from a kubeconfig or the pod's
ServiceAccount, closed with the server) and returns plain dicts, so the mapping code stays
pure. Every request carries the configured timeout and every list the configured limit.

The Kubernetes permissions this needs, and no more (its ServiceAccount's least privilege):

* ``kubefal.io`` ``falapps``: get, list, create, update, patch, delete (apps, scale, deploy);
* ``pods``: list (runners), delete (``fal runners stop|kill``); ``pods/log``: get
  (``fal runners logs``);
* ``apps`` ``deployments``: patch (``fal apps rollout``: a restartedAt pod-template annotation);
* ``events``: create (each change names the API key that made it);
* ``configmaps``: create, patch, list, delete (the source ConfigMap ``fal deploy`` writes,
  owned by its app; older sources go once the new revision is ready);
* ``secrets`` in the key namespace: get, list, create, patch (``fal keys``); in app namespaces:
  get, create, update the ``kubefal-secrets`` Secret (``fal secrets``);
* ``namespaces``: list (``fal secrets list`` with a key scoped to every namespace reads
  ``kubefal-secrets`` in each, so no right to list every Secret of the cluster is needed).

The gateway, on the hot path, needs none of the write permissions.

This module is over 500 lines because it is the one module that talks to the Kubernetes API
for the control plane (the Backend the servicer uses), so every call, and the RBAC listed
above, stays in one place to review.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from kubefal_api import apikeys, naming, v1alpha1
from kubefal_controlplane import gateway_admin, mapping
from kubefal_controlplane import settings as settings_module

logger = logging.getLogger(__name__)

RUNNER_SELECTOR = f"{naming.LABEL_COMPONENT}={naming.COMPONENT_RUNNER},{naming.LABEL_APP}"
"""Runner pods of any FalApp (the app label present, whatever its value)."""
EVENT_SOURCE = "kubefal-controlplane"


def new_api_client(settings: settings_module.Settings) -> k8s.ApiClient:
    """A client from the kubeconfig, or from the pod's ServiceAccount when none is given."""
    if settings.kubeconfig is not None:
        api: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(settings.kubeconfig), context=settings.context
        )
        return api
    k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


class Cluster:
    """Typed-enough access to the objects the RPCs map onto."""

    def __init__(self, api_client: k8s.ApiClient, settings: settings_module.Settings) -> None:
        self.api_client = api_client
        self.core = k8s.CoreV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)
        self.apps = k8s.AppsV1Api(api_client)
        self.key_namespace = settings.key_namespace
        self.timeout = settings.kube_timeout
        self.limit = settings.max_list_items
        self.settings = settings

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def _plain(self, obj: Any) -> Any:
        return self.api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]

    def _items(self, listed: Any, what: str) -> list[dict[str, Any]]:
        document = listed if isinstance(listed, dict) else self._plain(listed)
        if (document.get("metadata") or {}).get("continue"):
            logger.warning("listing %s stopped at %d items (--max-list-items)", what, self.limit)
        return list(document.get("items") or [])

    # ---- API keys -------------------------------------------------------------------------

    def read_key_record(self, key_id: str) -> apikeys.KeyRecord | None:
        try:
            secret = self.core.read_namespaced_secret(
                apikeys.secret_name(key_id), self.key_namespace, _request_timeout=self.timeout
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        try:
            return apikeys.record_from_secret(self._plain(secret))
        except apikeys.InvalidKeyRecordError as error:
            logger.warning("Secret %s is not a valid key record: %s", key_id, error)
            return None

    def list_key_records(self) -> list[apikeys.KeyRecord]:
        listed = self.core.list_namespaced_secret(
            self.key_namespace,
            label_selector=apikeys.LABEL_SELECTOR,
            limit=self.limit,
            _request_timeout=self.timeout,
        )
        records = []
        for secret in self._items(listed, "API keys"):
            try:
                records.append(apikeys.record_from_secret(secret))
            except apikeys.InvalidKeyRecordError as error:
                name = secret.get("metadata", {}).get("name")
                logger.warning("Secret %s is not a valid key record: %s", name, error)
        return records

    def create_key_secret(self, record: apikeys.KeyRecord) -> None:
        self.core.create_namespaced_secret(
            self.key_namespace,
            cast(Any, apikeys.secret_manifest(record, namespace=self.key_namespace)),
            _request_timeout=self.timeout,
        )

    def revoke_key(self, key_id: str) -> None:
        self.core.patch_namespaced_secret(
            apikeys.secret_name(key_id),
            self.key_namespace,
            {"stringData": {apikeys.FIELD_REVOKED: "true"}},
            _request_timeout=self.timeout,
        )

    # ---- FalApps ---------------------------------------------------------------------------

    def list_falapps(self, namespaces: tuple[str, ...] | None) -> list[dict[str, Any]]:
        """FalApps in ``namespaces`` (None: every namespace)."""
        if namespaces is None:
            listed = self.custom.list_cluster_custom_object(
                v1alpha1.GROUP,
                v1alpha1.VERSION,
                v1alpha1.PLURAL,
                limit=self.limit,
                _request_timeout=self.timeout,
            )
            return self._items(listed, "FalApps")
        items: list[dict[str, Any]] = []
        for namespace in namespaces:
            listed = self.custom.list_namespaced_custom_object(
                v1alpha1.GROUP,
                v1alpha1.VERSION,
                namespace,
                v1alpha1.PLURAL,
                limit=self.limit,
                _request_timeout=self.timeout,
            )
            items += self._items(listed, f"FalApps in {namespace}")
        return items

    def find_falapps_named(
        self, name: str, namespaces: tuple[str, ...] | None
    ) -> list[dict[str, Any]]:
        """FalApps called ``name`` in ``namespaces`` (None: every namespace)."""
        if namespaces is not None:
            found = [self.get_falapp(namespace, name) for namespace in namespaces]
            return [app for app in found if app is not None]
        listed = self.custom.list_cluster_custom_object(
            v1alpha1.GROUP,
            v1alpha1.VERSION,
            v1alpha1.PLURAL,
            field_selector=f"metadata.name={name}",
            limit=self.limit,
            _request_timeout=self.timeout,
        )
        return self._items(listed, f"FalApps named {name}")

    def get_falapp(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            app = self.custom.get_namespaced_custom_object(
                v1alpha1.GROUP,
                v1alpha1.VERSION,
                namespace,
                v1alpha1.PLURAL,
                name,
                _request_timeout=self.timeout,
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return cast(dict[str, Any], app)

    def patch_falapp(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch a FalApp (include ``metadata.resourceVersion`` for optimistic locking)."""
        patched = self.custom.patch_namespaced_custom_object(
            v1alpha1.GROUP,
            v1alpha1.VERSION,
            namespace,
            v1alpha1.PLURAL,
            name,
            patch,
            _content_type="application/merge-patch+json",
            _request_timeout=self.timeout,
        )
        return cast(dict[str, Any], patched)

    def create_falapp(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        created = self.custom.create_namespaced_custom_object(
            v1alpha1.GROUP,
            v1alpha1.VERSION,
            namespace,
            v1alpha1.PLURAL,
            body,
            _request_timeout=self.timeout,
        )
        return cast(dict[str, Any], created)

    def replace_falapp(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replace a FalApp (``body`` carries ``metadata.resourceVersion``: 409 on a race)."""
        replaced = self.custom.replace_namespaced_custom_object(
            v1alpha1.GROUP,
            v1alpha1.VERSION,
            namespace,
            v1alpha1.PLURAL,
            name,
            body,
            _request_timeout=self.timeout,
        )
        return cast(dict[str, Any], replaced)

    def ensure_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        """Create a ConfigMap named after its content; an existing one already holds it."""
        try:
            self.core.create_namespaced_config_map(
                namespace, cast(Any, body), _request_timeout=self.timeout
            )
        except ApiException as error:
            if error.status != 409:
                raise

    def delete_config_maps(self, namespace: str, *, label_selector: str, keep: str) -> None:
        """Delete the ConfigMaps matching ``label_selector`` except ``keep``."""
        listed = self.core.list_namespaced_config_map(
            namespace,
            label_selector=label_selector,
            limit=self.limit,
            _request_timeout=self.timeout,
        )
        for item in self._items(listed, f"ConfigMaps in {namespace}"):
            name = str(item["metadata"]["name"])
            if name != keep:
                try:
                    self.core.delete_namespaced_config_map(
                        name, namespace, _request_timeout=self.timeout
                    )
                except ApiException as error:
                    if error.status != 404:
                        raise

    def adopt_config_map(self, namespace: str, name: str, owner: dict[str, Any]) -> None:
        """Make the FalApp own its source ConfigMap, so deleting the app removes it."""
        meta = owner["metadata"]
        reference = naming.owner_reference(meta["name"], meta["uid"])
        self.core.patch_namespaced_config_map(
            name,
            namespace,
            {"metadata": {"ownerReferences": [reference]}},
            _request_timeout=self.timeout,
        )

    def delete_falapp(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            v1alpha1.GROUP,
            v1alpha1.VERSION,
            namespace,
            v1alpha1.PLURAL,
            name,
            _request_timeout=self.timeout,
        )

    # ---- runner pods -----------------------------------------------------------------------

    def list_runner_pods(
        self, namespaces: tuple[str, ...] | None, *, app_name: str | None = None
    ) -> list[dict[str, Any]]:
        selector = (
            f"{naming.LABEL_COMPONENT}={naming.COMPONENT_RUNNER},{naming.LABEL_APP}={app_name}"
            if app_name is not None
            else RUNNER_SELECTOR
        )
        if namespaces is None:
            listed = self.core.list_pod_for_all_namespaces(
                label_selector=selector, limit=self.limit, _request_timeout=self.timeout
            )
            return self._items(listed, "runner pods")
        items: list[dict[str, Any]] = []
        for namespace in namespaces:
            listed = self.core.list_namespaced_pod(
                namespace, label_selector=selector, limit=self.limit, _request_timeout=self.timeout
            )
            items += self._items(listed, f"runner pods in {namespace}")
        return items

    def find_runner_pods(
        self, pod_name: str, namespaces: tuple[str, ...] | None
    ) -> list[dict[str, Any]]:
        """Runner pods called ``pod_name`` in ``namespaces`` (None: every namespace)."""
        field_selector = f"metadata.name={pod_name}"
        if namespaces is None:
            listed = self.core.list_pod_for_all_namespaces(
                label_selector=RUNNER_SELECTOR,
                field_selector=field_selector,
                limit=self.limit,
                _request_timeout=self.timeout,
            )
            return self._items(listed, f"runner pods named {pod_name}")
        items: list[dict[str, Any]] = []
        for namespace in namespaces:
            listed = self.core.list_namespaced_pod(
                namespace,
                label_selector=RUNNER_SELECTOR,
                field_selector=field_selector,
                limit=self.limit,
                _request_timeout=self.timeout,
            )
            items += self._items(listed, f"runner pods named {pod_name} in {namespace}")
        return items

    def runner_details(
        self, *, namespace: str, name: str
    ) -> dict[str, mapping.RunnerDetail] | None:
        """Pod name -> the gateway's view of that runner (None without a gateway URL)."""
        return gateway_admin.runner_details(
            self.settings.gateway_admin_url,
            namespace=namespace,
            name=name,
            timeout=self.settings.gateway_timeout,
            token=self.settings.gateway_admin_token,
        )

    def runner_details_by_app(
        self, namespaces: tuple[str, ...] | None
    ) -> dict[str, dict[str, mapping.RunnerDetail]] | None:
        """App id -> pod name -> the gateway's view, in one call (None without a gateway)."""
        return gateway_admin.runners(
            self.settings.gateway_admin_url,
            namespaces=namespaces,
            timeout=self.settings.gateway_timeout,
            token=self.settings.gateway_admin_token,
        )

    def refuse_deploy(self) -> None:
        """A cluster deploys apps."""

    def read_runner_log(
        self,
        namespace: str,
        name: str,
        *,
        since_seconds: int | None,
        tail_lines: int,
        limit_bytes: int,
    ) -> bytes:
        """The newest ``tail_lines`` of a runner container's log (at most ``limit_bytes``),
        each line prefixed with its RFC 3339 timestamp (``fal runners logs``)."""
        response = self.core.read_namespaced_pod_log(
            name,
            namespace,
            container=naming.RUNNER_CONTAINER,
            timestamps=True,
            since_seconds=since_seconds,
            tail_lines=tail_lines,
            limit_bytes=limit_bytes,
            _preload_content=False,
            _request_timeout=self.timeout,
        )
        stream: Any = response  # urllib3.HTTPResponse (_preload_content=False)
        try:
            data: bytes = stream.read(limit_bytes + 64 * 1024)
            return data
        finally:
            stream.release_conn()

    def follow_runner_log(self, namespace: str, name: str, *, since_seconds: int | None) -> Any:
        """A runner container's log as it is written (``fal runners logs --follow``): an
        open ``urllib3`` response; the caller reads it and closes it."""
        return self.core.read_namespaced_pod_log(
            name,
            namespace,
            container=naming.RUNNER_CONTAINER,
            timestamps=True,
            follow=True,
            since_seconds=since_seconds,
            _preload_content=False,
            _request_timeout=(self.timeout, 24 * 3600.0),
        )

    def build_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The pods of a build Job of spec.containerImage (kubefal_operator.build)."""
        listed = self.core.list_namespaced_pod(
            namespace, label_selector=f"job-name={job}", limit=8, _request_timeout=self.timeout
        )
        return self._items(listed, f"the pods of build Job {job}")

    def follow_build_log(self, namespace: str, name: str) -> Any:
        """A build pod's log as it is written: an open ``urllib3`` response."""
        return self.core.read_namespaced_pod_log(
            name,
            namespace,
            follow=True,
            _preload_content=False,
            _request_timeout=(self.timeout, 24 * 3600.0),
        )

    def delete_pod(self, namespace: str, name: str, *, grace_seconds: int | None) -> None:
        """Delete a pod; ``grace_seconds`` None keeps the pod's own grace period."""
        self.core.delete_namespaced_pod(
            name, namespace, grace_period_seconds=grace_seconds, _request_timeout=self.timeout
        )

    def restart_runners(self, namespace: str, app_name: str, *, at: str) -> None:
        """Replace an app's runners as ``kubectl rollout restart`` does: a pod-template
        annotation owned by this manager (the operator's server-side apply leaves it alone),
        rolled out with the app's own strategy."""
        self.apps.patch_namespaced_deployment(
            naming.deployment_name(app_name),
            namespace,
            {
                "spec": {
                    "template": {
                        "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": at}}
                    }
                }
            },
            field_manager=EVENT_SOURCE,
            _request_timeout=self.timeout,
        )

    # ---- secrets for apps ------------------------------------------------------------------

    def list_namespace_names(self) -> tuple[str, ...]:
        listed = self.core.list_namespace(limit=self.limit, _request_timeout=self.timeout)
        return tuple(
            sorted(str(item["metadata"]["name"]) for item in self._items(listed, "namespaces"))
        )

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            secret = self.core.read_namespaced_secret(
                name, namespace, _request_timeout=self.timeout
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        plain: dict[str, Any] = self._plain(secret)
        return plain

    def create_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self.core.create_namespaced_secret(
            namespace, cast(Any, body), _request_timeout=self.timeout
        )

    def replace_secret(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Replace (``body`` carries ``metadata.resourceVersion``: a concurrent change is 409)."""
        self.core.replace_namespaced_secret(
            name, namespace, cast(Any, body), _request_timeout=self.timeout
        )

    # ---- audit -----------------------------------------------------------------------------

    def record_event(
        self,
        *,
        namespace: str,
        involved: dict[str, Any],
        reason: str,
        message: str,
    ) -> None:
        """An Event on ``involved`` (failures are logged, never fail the call)."""
        now = datetime.datetime.now(tz=datetime.UTC)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{involved.get('name', 'kubefal')}.",
                "namespace": namespace,
            },
            "involvedObject": {**involved, "namespace": namespace},
            "reason": reason,
            "message": message[:1024],
            "type": "Normal",
            "source": {"component": EVENT_SOURCE},
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
            "reportingComponent": EVENT_SOURCE,
        }
        try:
            self.core.create_namespaced_event(
                namespace, cast(Any, body), _request_timeout=self.timeout
            )
        except (ApiException, OSError) as error:
            logger.warning("could not record event %s in %s: %s", reason, namespace, error)
