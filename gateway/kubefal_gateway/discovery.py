"""Kubernetes discovery: FalApps, their runner Pods and the API-key Secrets, kept current.

The `kubernetes` client is synchronous, so each watch runs in its own daemon thread (list, then
watch from the list's resourceVersion, re-list on any error or expiry) and hands every object to
the event loop with `call_soon_threadsafe`; the registry, runner table and key store are only
ever touched on the loop. This module is the only one in the gateway that talks to the API.

Labels alone do not make a runner: any pod in the namespace could carry them and would then
receive the app's traffic, keys and inputs included. A pod becomes a runner of app ``a`` only
when it is Ready and its controller is a ReplicaSet this gateway has seen (matched by uid, so
a made-up owner reference to a name fails) whose own controller is the Deployment the operator
renders for ``a``, with the pod's ``pod-template-hash`` in the ReplicaSet's name, as the
Deployment controller creates them. ReplicaSets are watched by the runner labels (the
Deployment controller copies the pod template's labels onto them), so the check costs one
more label-selected watch and a dictionary lookup per pod event. Someone who may create
ReplicaSets in the app's namespace may also edit the app's Deployment, so the chain is as
strong as that namespace's RBAC.

A runner that finished ``setup()`` announces itself (`announce`, the admin listener's
``POST /_kubefal/runners/ready``), so its first request does not wait for the kubelet's next
readiness probe, the status write and this watch (about 0.1 s, often more). Who announces is
taken from the TCP peer address, not from anything the caller says: the announcement is
accepted only from the IP of a watched, running, not terminating pod that passes the ownership
check above, and it makes that pod (and only it) a ready runner of its own app. A pod cannot
announce for another app's pod without sending from that pod's IP, which a TCP handshake does
not allow. This needs no secret in the runner's environment (a per-app HMAC key would need one
Secret per app that the gateway can read in every namespace). The Pod watch stays the source of
truth for removal: a pod that is deleted, terminating, rescheduled to another IP or no longer
owned by its app's Deployment is removed; until the pod's Ready condition has been seen once,
an announced runner is not removed for lacking it.

Pods of an app that are not Ready yet are marked starting in the runner table (the
``countStarting`` scaling policy counts what they will serve); a scheduled one with no restart
and no back-off gets a head start, the others count only as capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"
"""Set by the Deployment controller on its pods; their ReplicaSet is named ``<deploy>-<hash>``."""


def _controller(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The owner reference marked ``controller: true``, if any."""
    for reference in metadata.get("ownerReferences") or ():
        if isinstance(reference, dict) and reference.get("controller") is True:
            return reference
    return None


@dataclasses.dataclass(frozen=True)
class _ReplicaSet:
    """What the ownership check needs of a ReplicaSet that a Deployment controls."""

    namespace: str
    name: str
    deployment: str


def _replica_set_view(replica_set: dict[str, Any]) -> tuple[str, _ReplicaSet] | None:
    """(uid, view) of a ReplicaSet controlled by an apps/v1 Deployment; None otherwise."""
    metadata = replica_set.get("metadata") or {}
    controller = _controller(metadata)
    uid = metadata.get("uid")
    if (
        not uid
        or controller is None
        or controller.get("apiVersion") != "apps/v1"
        or controller.get("kind") != "Deployment"
    ):
        return None
    return str(uid), _ReplicaSet(
        namespace=str(metadata.get("namespace")),
        name=str(metadata.get("name")),
        deployment=str(controller.get("name")),
    )


def _pod_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if not status.get("podIP") or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(
        condition.get("type") == "Ready" and condition.get("status") == "True"
        for condition in status.get("conditions") or ()
    )


def _pod_alive(pod: dict[str, Any]) -> bool:
    """Running with an IP and not being deleted (readiness aside)."""
    status = pod.get("status") or {}
    return (
        bool(status.get("podIP"))
        and status.get("phase", "Running") == "Running"
        and not (pod.get("metadata") or {}).get("deletionTimestamp")
    )


BACK_OFF_REASONS = frozenset(
    {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"}
)
"""Container waiting reasons that mean a pod is not about to become ready."""


def _pod_starting(pod: dict[str, Any]) -> bool:
    """Pending or Running, not Ready, not being deleted: a runner on its way (or stuck)."""
    status = pod.get("status") or {}
    return (
        status.get("phase", "Pending") in ("Pending", "Running")
        and not (pod.get("metadata") or {}).get("deletionTimestamp")
        and not _pod_ready(pod)
    )


def _start_expected(pod: dict[str, Any]) -> bool:
    """Scheduled, no container restarted or backing off: a cold start under way, which the
    countStarting policy gives a head start (an unscheduled pod may wait for GPUs for long)."""
    if not (pod.get("spec") or {}).get("nodeName"):
        return False
    for container in (pod.get("status") or {}).get("containerStatuses") or ():
        if int(container.get("restartCount") or 0) > 0:
            return False
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in BACK_OFF_REASONS:
            return False
    return True


class NotAnnounceable(Exception):
    """An announcement that does not come from a runner pod the gateway knows."""


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
        self._replica_sets: dict[str, _ReplicaSet] = {}
        """ReplicaSets with runner labels that a Deployment controls, by uid."""
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        """Every runner-labelled pod seen, by (app id, runner id): re-checked when its
        ReplicaSet shows up after it (watches deliver in no particular order)."""
        self._announced: dict[tuple[str, str], str] = {}
        """Runners that announced themselves before the watch saw their pod Ready: their IP."""
        self._relisting = False
        """A re-list is being applied: pods first seen now are not fresh cold starts."""

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
        apps_api = client.AppsV1Api(api_client)
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
                "replicasets",
                apps_api.list_replica_set_for_all_namespaces,
                {"label_selector": RUNNER_SELECTOR},
                self._on_replica_set,
                self._relist_replica_sets,
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

    def owned_by_app(self, pod: dict[str, Any]) -> bool:
        """True when the pod belongs to its app's Deployment (see the module docstring)."""
        metadata = pod.get("metadata") or {}
        labels = metadata.get("labels") or {}
        controller = _controller(metadata)
        if controller is None or controller.get("kind") != "ReplicaSet":
            return False
        replica_set = self._replica_sets.get(str(controller.get("uid")))
        app_name = labels.get(naming.LABEL_APP, "")
        template_hash = labels.get(POD_TEMPLATE_HASH_LABEL)
        return (
            replica_set is not None
            and bool(app_name)
            and bool(template_hash)
            and controller.get("apiVersion") == "apps/v1"
            and replica_set.namespace == metadata.get("namespace")
            and replica_set.name == controller.get("name")
            and replica_set.deployment == naming.deployment_name(app_name)
            and replica_set.name == f"{replica_set.deployment}-{template_hash}"
        )

    def announce(self, peer_ip: str, *, pod_name: str | None = None) -> tuple[str, str]:
        """A runner at ``peer_ip`` (the TCP peer) finished setup(): make its pod a ready runner.

        Returns (app id, runner id); raises `NotAnnounceable` unless exactly one watched pod
        with that IP is running, not terminating and owned by its app's Deployment (and, when
        ``pod_name`` is given, has that name)."""
        matches = [
            (key, pod)
            for key, pod in self._pods.items()
            if (pod.get("status") or {}).get("podIP") == peer_ip
            and _pod_alive(pod)
            and self.owned_by_app(pod)
        ]
        if pod_name is not None:
            matches = [
                (key, pod)
                for key, pod in matches
                if (pod.get("metadata") or {}).get("name") == pod_name
            ]
        if len(matches) != 1:
            raise NotAnnounceable(f"no single runner pod of a known app has the IP {peer_ip}")
        (app_id, runner_id), _pod = matches[0]
        self._announced[(app_id, runner_id)] = peer_ip
        self.table.announce(app_id=app_id, runner_id=runner_id, host=peer_ip, port=self.runner_port)
        return app_id, runner_id

    def _on_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        app_id, runner_id = self._pod_ids(pod)
        key = (app_id, runner_id)
        if event_type == "DELETED":
            self._pods.pop(key, None)
        else:
            self._pods[key] = pod
        announced_ip = self._announced.get(key)
        if announced_ip is not None:
            if _pod_ready(pod) or event_type == "DELETED":
                del self._announced[key]  # the watch has caught up: it decides from now on
            elif (
                _pod_alive(pod)
                and (pod.get("status") or {}).get("podIP") == announced_ip
                and self.owned_by_app(pod)
            ):
                return  # announced, Ready condition not written yet: keep serving it
            else:
                del self._announced[key]
        if event_type == "DELETED" or not _pod_ready(pod) or not self.owned_by_app(pod):
            self.table.remove(app_id=app_id, runner_id=runner_id)
            if event_type != "DELETED" and _pod_starting(pod) and self.owned_by_app(pod):
                self.table.mark_starting(
                    app_id=app_id,
                    runner_id=runner_id,
                    timed=_start_expected(pod),
                    measurable=not self._relisting,
                )
            else:
                self.table.forget(app_id=app_id, runner_id=runner_id)
        else:
            self.table.upsert(
                app_id=app_id,
                runner_id=runner_id,
                host=pod["status"]["podIP"],
                port=self.runner_port,
            )

    def _relist_pods(self, items: list[dict[str, Any]]) -> None:
        seen = set()
        self._relisting = True  # pods first seen here may have been starting for a while
        try:
            for pod in items:
                seen.add(self._pod_ids(pod))
                self._on_pod("ADDED", pod)
        finally:
            self._relisting = False
        for app_id, runner_id in set(self._pods) - seen:
            self.table.forget(app_id=app_id, runner_id=runner_id)
            del self._pods[app_id, runner_id]
        for key in set(self._announced) - seen:
            del self._announced[key]
        for app_id, known in list(self.table.by_app.items()):
            for runner_id in list(known):
                if (app_id, runner_id) not in seen:
                    self.table.remove(app_id=app_id, runner_id=runner_id)

    # ---- ReplicaSets (the ownership chain of runner pods) ----
    def _recheck_pods(self, uids: set[str] | None) -> None:
        """Re-evaluate the known pods controlled by ``uids`` (None: every known pod)."""
        for pod in list(self._pods.values()):
            controller = _controller(pod.get("metadata") or {})
            if uids is None or (controller is not None and str(controller.get("uid")) in uids):
                self._on_pod("MODIFIED", pod)

    def _on_replica_set(self, event_type: str, replica_set: dict[str, Any]) -> None:
        uid = str((replica_set.get("metadata") or {}).get("uid"))
        view = None if event_type == "DELETED" else _replica_set_view(replica_set)
        if view is None:
            if self._replica_sets.pop(uid, None) is not None:
                self._recheck_pods({uid})
            return
        if self._replica_sets.get(uid) != view[1]:
            self._replica_sets[uid] = view[1]
            self._recheck_pods({uid})

    def _relist_replica_sets(self, items: list[dict[str, Any]]) -> None:
        views = dict(filter(None, (_replica_set_view(item) for item in items)))
        if views != self._replica_sets:
            self._replica_sets = views
            self._recheck_pods(None)

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
