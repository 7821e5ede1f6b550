"""The API key each runner gets without the user asking: storage-only, one app's namespace.

``fal.toolkit`` inside an app (``Image.from_pil``, ``File.from_path``, ``upload_image``, the
KV store) needs a ``FAL_KEY`` to upload to the gateway's file store (docs/fal-storage.md). A
FalApp that names none (``falKeySecretRef`` unset, no ``FAL_KEY`` in ``spec.env``) gets one
from the operator:

* a key record in the namespace the gateway reads keys from (``KUBEFAL_KEY_NAMESPACE``, the
  gateway's ``--key-namespace``): a normal ``kubefal.io/api-key`` Secret whose namespaces are
  the app's namespace only and whose scopes are ``storage`` only, so the key can store and read
  that namespace's files, KV and /data but cannot call any app (the gateway and the control
  plane refuse it for that, 403) nor touch another namespace;
* a Secret ``<app>-fal-key`` in the app's namespace holding the key under its id, owned by the
  FalApp (the garbage collector deletes it with the app), which the runner Deployment reads
  as ``FAL_KEY`` (``secretKeyRef`` with the key id: a new key is a new pod template, so the
  runners roll onto it).

Both carry ``kubefal.io/runner-key=true`` and the app's namespace and name as labels. In the
app's namespace the operator only gets, applies and deletes that one Secret by name; it lists
Secrets only in the key namespace.

Lifecycle: created on the app's first reconcile; checked again on each new generation of the
FalApp (and at operator start) and replaced (new key, rolling update, old record deleted) when
its record is gone or revoked: ``kubefal keys revoke <id>`` and then any spec edit (or an
operator restart) rotates it. Its record is deleted when the FalApp is deleted, and records
whose FalApp no longer exists are deleted when the operator starts. When the key namespace is the
app's namespace the record is owned by the FalApp too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
from collections.abc import Collection, Mapping
from typing import Any, Final

import aiohttp

from kubefal_api import apikeys, v1alpha1
from kubefal_operator import kube
from kubefal_operator.render import common

logger = logging.getLogger(__name__)

LABEL_RUNNER_KEY: Final = "kubefal.io/runner-key"
LABEL_APP_NAMESPACE: Final = "kubefal.io/runner-key-namespace"
LABEL_APP: Final = "kubefal.io/runner-key-app"
ANNOTATION_APP_UID: Final = "kubefal.io/falapp-uid"
FAL_KEY: Final = "FAL_KEY"
ALL: Final = "*"
Key = tuple[str, str]


def secret_name(app_name: str) -> str:
    """The app-namespace Secret holding the runner key, under the key's id (a new key is a
    new ``secretKeyRef.key``, so a new pod template)."""
    return f"{app_name}-fal-key"


def _held_key_id(secret: Mapping[str, Any] | None, owner: common.Owner) -> str | None:
    """The key id a Secret of ours holds, if it is ours (owned by this FalApp) and holds one."""
    if secret is None:
        return None
    meta = secret.get("metadata") or {}
    if not any(ref.get("uid") == owner.uid for ref in meta.get("ownerReferences") or []):
        return None
    held = [name for name in (secret.get("data") or {}) if apikeys.is_valid_key_id(name)]
    return held[0] if len(held) == 1 else None


def wants_key(spec: v1alpha1.FalAppSpec) -> bool:
    """True unless the FalApp brings its own key (``falKeySecretRef`` or ``env: FAL_KEY``)."""
    return spec.fal_key_secret_ref is None and all(item.name != FAL_KEY for item in spec.env)


def _labels(namespace: str, app_name: str) -> dict[str, str]:
    return {
        LABEL_RUNNER_KEY: "true",
        LABEL_APP_NAMESPACE: namespace,
        LABEL_APP: app_name,
        "app.kubernetes.io/managed-by": "kubefal",
    }


def record_manifest(
    record: apikeys.KeyRecord, *, key_namespace: str, owner: common.Owner
) -> common.Manifest:
    """The key record Secret the gateway verifies, labelled with the app it belongs to."""
    manifest = apikeys.secret_manifest(record, namespace=key_namespace)
    manifest["metadata"]["labels"].update(_labels(owner.namespace, owner.name))
    manifest["metadata"]["annotations"] = {ANNOTATION_APP_UID: owner.uid}
    if key_namespace == owner.namespace:
        manifest["metadata"]["ownerReferences"] = [owner.reference()]
    return manifest


def key_secret_manifest(key: apikeys.ApiKey, *, owner: common.Owner) -> common.Manifest:
    """The app-namespace Secret the runner Deployment reads ``FAL_KEY`` from."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(owner.name),
            "namespace": owner.namespace,
            "labels": {**_labels(owner.namespace, owner.name), apikeys.LABEL_API_KEY_ID: key.id},
            "annotations": {ANNOTATION_APP_UID: owner.uid},
            "ownerReferences": [owner.reference()],
        },
        # `data`, not `stringData`: server-side apply then drops the previous key's entry.
        "data": {key.id: base64.b64encode(str(key).encode()).decode("ascii")},
    }


def new_record(key: apikeys.ApiKey, owner: common.Owner) -> apikeys.KeyRecord:
    return apikeys.new_record(
        key=key,
        namespaces=[owner.namespace],
        description=f"runner key of FalApp {owner.namespace}/{owner.name} (storage only)",
        scopes=[apikeys.SCOPE_STORAGE],
    )


def _usable(record_secret: Mapping[str, Any] | None, owner: common.Owner) -> bool:
    if record_secret is None:
        return False
    try:
        record = apikeys.record_from_secret(record_secret)
    except apikeys.InvalidKeyRecordError:
        return False
    return not record.revoked and record.namespaces == (owner.namespace,)


@dataclasses.dataclass
class RunnerKeys:
    """Provides, rotates and removes runner keys; remembers what it checked per app."""

    client: kube.KubeClient
    key_namespace: str
    known: dict[Key, tuple[str, int, str]] = dataclasses.field(default_factory=dict)
    """(namespace, app) → (FalApp uid, generation, key id) verified by this process: checked
    again when the FalApp's spec changes (a new generation)."""
    tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)

    def records_in(self, owner: common.Owner) -> str:
        """Where the app's key record goes: the key namespace, or with ``*`` (a gateway that
        reads keys in every namespace) the app's own namespace."""
        return owner.namespace if self.key_namespace == ALL else self.key_namespace

    async def with_key(self, app: v1alpha1.FalApp) -> v1alpha1.FalApp:
        """``app`` with ``falKeySecretRef`` naming its runner key (made when needed); ``app``
        itself when it brings its own key, or when the key namespace does not exist or the
        operator may not write there (logged: the app runs, its uploads answer 401)."""
        if not wants_key(app.spec):
            return app
        try:
            key_id = await self.ensure(common.Owner.of(app))
        except kube.ApiError as error:
            if error.status not in (403, 404) or error.namespace_terminating:
                raise
            logger.warning(
                "%s/%s: no runner key (FAL_KEY) for its runners: %s",
                app.metadata.namespace,
                app.metadata.name,
                error,
            )
            return app
        reference = v1alpha1.SecretKeyReference(
            name=secret_name(app.metadata.name or ""), key=key_id
        )
        spec = app.spec.model_copy(update={"fal_key_secret_ref": reference})
        return app.model_copy(update={"spec": spec})

    async def ensure(self, owner: common.Owner) -> str:
        """The id of a usable key of ``owner`` in its Secret; makes a new one if none is.

        Reads one Secret by name in the app's namespace (no list: the operator needs no right
        to list Secrets there) and the key's record in the key namespace."""
        app = (owner.namespace, owner.name)
        cached = self.known.get(app)
        if cached is not None and cached[:2] == (owner.uid, owner.generation):
            return cached[2]
        name = secret_name(owner.name)
        current = await self.client.get(kube.SECRETS, namespace=owner.namespace, name=name)
        held = _held_key_id(current, owner)
        if held is not None:
            record = await self.client.get(
                kube.SECRETS, namespace=self.records_in(owner), name=apikeys.secret_name(held)
            )
            if _usable(record, owner):
                self.known[app] = (owner.uid, owner.generation, held)
                return held
        api_key = apikeys.generate_key()
        await self.client.apply(
            record_manifest(
                new_record(api_key, owner), key_namespace=self.records_in(owner), owner=owner
            )
        )
        # Replaces the Secret's data: the old key's entry goes, so the runners roll.
        await self.client.apply(key_secret_manifest(api_key, owner=owner))
        logger.info("%s/%s: runner key %s provided", owner.namespace, owner.name, api_key.id)
        if held is not None:
            await self.client.delete(
                kube.SECRETS, namespace=self.records_in(owner), name=apikeys.secret_name(held)
            )
        self.known[app] = (owner.uid, owner.generation, api_key.id)
        return api_key.id

    async def remove(self, namespace: str, app_name: str) -> int:
        """The FalApp is gone: delete its key records (its key Secrets go with the app)."""
        self.known.pop((namespace, app_name), None)
        if self.key_namespace == ALL:
            return 0  # records in the app's namespace, owned by the FalApp
        selector = (
            f"{LABEL_RUNNER_KEY}=true,{LABEL_APP_NAMESPACE}={namespace},{LABEL_APP}={app_name}"
        )
        records = await self.client.list(
            kube.SECRETS, namespace=self.key_namespace, label_selector=selector
        )
        for record in records:
            await self.client.delete(
                kube.SECRETS,
                namespace=self.key_namespace,
                name=str(record["metadata"]["name"]),
                uid=record["metadata"].get("uid"),
            )
        return len(records)

    def forget(self, namespace: str, app_name: str) -> None:
        """``remove`` in the background (called from a synchronous deletion handler)."""

        async def run() -> None:
            try:
                await self.remove(namespace, app_name)
            except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
                logger.warning("removing the runner key of %s/%s: %s", namespace, app_name, error)

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def sweep(self, apps: Collection[Mapping[str, Any]], namespaces: Collection[str]) -> int:
        """Delete records whose FalApp (same namespace, name and uid) no longer exists, among
        the watched ``namespaces`` (all when empty). Returns how many were deleted."""
        if self.key_namespace == ALL:
            return 0  # records in the app's namespace, owned by the FalApp
        alive = {
            (
                str((body.get("metadata") or {}).get("namespace")),
                str((body.get("metadata") or {}).get("name")),
                str((body.get("metadata") or {}).get("uid")),
            )
            for body in apps
        }
        records = await self.client.list(
            kube.SECRETS, namespace=self.key_namespace, label_selector=f"{LABEL_RUNNER_KEY}=true"
        )
        removed = 0
        for record in records:
            meta = record.get("metadata") or {}
            labels = meta.get("labels") or {}
            app_namespace = labels.get(LABEL_APP_NAMESPACE, "")
            if namespaces and app_namespace not in namespaces:
                continue
            owner = (
                app_namespace,
                labels.get(LABEL_APP, ""),
                (meta.get("annotations") or {}).get(ANNOTATION_APP_UID, ""),
            )
            if owner not in alive:
                with contextlib.suppress(kube.ApiError):
                    removed += await self.client.delete(
                        kube.SECRETS,
                        namespace=self.key_namespace,
                        name=str(meta.get("name")),
                        uid=meta.get("uid"),
                    )
        return removed

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await task
