"""Kubernetes discovery: FalApps, their runner Pods and the API-key Secrets, kept current.

The `kubernetes` client is synchronous, so each watch runs in its own daemon thread (list, then
watch from the list's resourceVersion, re-list on any error or expiry) and hands every object to
the event loop with `call_soon_threadsafe`; the registry, runner table and key store are only
ever touched on the loop. This module is the only one in the gateway that talks to the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pathlib
import threading
from collections.abc import Callable
from typing import Any

from kubefal_api import apikeys, naming, v1alpha1
from kubefal_gateway import apps, auth, runners

LOGGER = logging.getLogger(__name__)
SERVICE_ACCOUNT_NAMESPACE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
"""In a pod, API-key Secrets are read from the gateway's own namespace unless configured."""
RUNNER_SELECTOR = f"{naming.LABEL_APP},{naming.LABEL_COMPONENT}={naming.COMPONENT_RUNNER}"


def _pod_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if not status.get("podIP") or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(
        condition.get("type") == "Ready" and condition.get("status") == "True"
        for condition in status.get("conditions") or ()
    )


class _Watch:
    """One list+watch loop in a thread, delivering (event type, object dict) to the loop."""

    def __init__(
        self,
        *,
        name: str,
        list_call: Callable[..., Any],
        list_kwargs: dict[str, Any],
        on_event: Callable[[str, dict[str, Any]], None],
        on_relist: Callable[[list[dict[str, Any]]], None],
        loop: asyncio.AbstractEventLoop,
        stop: threading.Event,
    ) -> None:
        self.name = name
        self.list_call = list_call
        self.list_kwargs = list_kwargs
        self.on_event = on_event
        self.on_relist = on_relist
        self.loop = loop
        self.stop = stop
        self.thread = threading.Thread(target=self._run, name=f"kubefal-watch-{name}", daemon=True)

    def _run(self) -> None:
        from kubernetes import watch

        while not self.stop.is_set():
            try:
                listing = self.list_call(**self.list_kwargs, _preload_content=False)
                body = json.loads(listing.data)
                items = body.get("items") or []
                self.loop.call_soon_threadsafe(self.on_relist, items)
                version = (body.get("metadata") or {}).get("resourceVersion")
                watcher = watch.Watch()  # type: ignore[no-untyped-call]
                for event in watcher.stream(  # type: ignore[no-untyped-call]
                    self.list_call,
                    **self.list_kwargs,
                    resource_version=version,
                    timeout_seconds=60,
                    _preload_content=False,
                ):
                    if self.stop.is_set():
                        watcher.stop()  # type: ignore[no-untyped-call]
                        break
                    raw = event.get("raw_object") or event.get("object")
                    if isinstance(raw, dict):
                        self.loop.call_soon_threadsafe(self.on_event, event["type"], raw)
            except Exception:
                LOGGER.exception("watch of %s failed; re-listing in 2 s", self.name)
                self.stop.wait(2.0)


class KubernetesDiscovery:
    """Keeps an AppRegistry, a RunnerTable and a KeyStore in line with the cluster."""

    def __init__(
        self,
        *,
        registry: apps.AppRegistry,
        keys: auth.KeyStore,
        table: runners.RunnerTable,
        kubeconfig: pathlib.Path | None,
        key_namespace: str | None,
        runner_port: int,
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.table = table
        self.kubeconfig = kubeconfig
        self.key_namespace = key_namespace
        self.runner_port = runner_port
        self.stop_event = threading.Event()
        self.watches: list[_Watch] = []

    def start(self) -> None:
        from kubernetes import client, config

        if self.kubeconfig is not None:
            api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig)
            )
        else:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            api_client = client.ApiClient()
        core = client.CoreV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        loop = asyncio.get_running_loop()
        if self.key_namespace is None and SERVICE_ACCOUNT_NAMESPACE.exists():
            self.key_namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        if self.key_namespace:
            secrets_call: Callable[..., Any] = core.list_namespaced_secret
            secrets_kwargs: dict[str, Any] = {
                "namespace": self.key_namespace,
                "label_selector": apikeys.LABEL_SELECTOR,
            }
        else:
            secrets_call = core.list_secret_for_all_namespaces
            secrets_kwargs = {"label_selector": apikeys.LABEL_SELECTOR}
        specs: list[tuple[str, Callable[..., Any], dict[str, Any], Any, Any]] = [
            (
                "falapps",
                custom.list_cluster_custom_object,
                {"group": v1alpha1.GROUP, "version": v1alpha1.VERSION, "plural": v1alpha1.PLURAL},
                self._on_falapp,
                self._relist_falapps,
            ),
            (
                "pods",
                core.list_pod_for_all_namespaces,
                {"label_selector": RUNNER_SELECTOR},
                self._on_pod,
                self._relist_pods,
            ),
            ("keys", secrets_call, secrets_kwargs, self._on_secret, self._relist_secrets),
        ]
        for name, call, kwargs, on_event, on_relist in specs:
            watch = _Watch(
                name=name,
                list_call=call,
                list_kwargs=kwargs,
                on_event=on_event,
                on_relist=on_relist,
                loop=loop,
                stop=self.stop_event,
            )
            self.watches.append(watch)
            watch.thread.start()

    async def stop(self) -> None:
        self.stop_event.set()
        for watch in self.watches:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(watch.thread.join, 1.0)

    # ---- FalApps ----
    def _on_falapp(self, event_type: str, body: dict[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        app_id = naming.app_id(str(metadata.get("namespace")), str(metadata.get("name")))
        if event_type == "DELETED":
            self.registry.remove(app_id)
            return
        try:
            self.registry.put(apps.from_falapp(body))
        except (apps.InvalidAppConfig, KeyError) as error:
            LOGGER.warning("ignoring FalApp %s: %s", app_id, error)

    def _relist_falapps(self, items: list[dict[str, Any]]) -> None:
        seen = set()
        for item in items:
            metadata = item.get("metadata") or {}
            seen.add(naming.app_id(str(metadata.get("namespace")), str(metadata.get("name"))))
            self._on_falapp("ADDED", item)
        for app_id in set(self.registry.apps) - seen:
            self.registry.remove(app_id)

    # ---- Pods ----
    def _pod_ids(self, pod: dict[str, Any]) -> tuple[str, str]:
        metadata = pod.get("metadata") or {}
        namespace = str(metadata.get("namespace"))
        app_name = (metadata.get("labels") or {}).get(naming.LABEL_APP, "")
        return naming.app_id(namespace, app_name), f"{namespace}/{metadata.get('name')}"

    def _on_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        app_id, runner_id = self._pod_ids(pod)
        if event_type == "DELETED" or not _pod_ready(pod):
            self.table.remove(app_id=app_id, runner_id=runner_id)
        else:
            self.table.upsert(
                app_id=app_id,
                runner_id=runner_id,
                host=pod["status"]["podIP"],
                port=self.runner_port,
            )

    def _relist_pods(self, items: list[dict[str, Any]]) -> None:
        seen = set()
        for pod in items:
            seen.add(self._pod_ids(pod))
            self._on_pod("ADDED", pod)
        for app_id, known in list(self.table.by_app.items()):
            for runner_id in list(known):
                if (app_id, runner_id) not in seen:
                    self.table.remove(app_id=app_id, runner_id=runner_id)

    # ---- API keys ----
    def _on_secret(self, event_type: str, secret: dict[str, Any]) -> None:
        try:
            record = apikeys.record_from_secret(secret)
        except apikeys.InvalidKeyRecordError as error:
            name = (secret.get("metadata") or {}).get("name")
            LOGGER.warning("ignoring API-key Secret %s: %s", name, error)
            return
        if event_type == "DELETED":
            self.keys.remove(record.id)
        else:
            self.keys.put(record)

    def _relist_secrets(self, items: list[dict[str, Any]]) -> None:
        records = []
        for secret in items:
            with contextlib.suppress(apikeys.InvalidKeyRecordError):
                records.append(apikeys.record_from_secret(secret))
        self.keys.replace_all(records)
