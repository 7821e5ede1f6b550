"""An in-memory stand-in for `kubefal_operator.kube.KubeClient`, the one module of the operator
that talks to the API, for unit tests of the orchestration (triggers, reconcile, actuation), the
way kopf's own tests fake the API rather than the code under test.

It keeps objects with resourceVersions, uids and generations, applies the way server-side apply
with ``force`` does for what the operator writes (a merge of the manifest, ``spec.replicas``
owned by the last manager that wrote it and dropped when its owner applies without it, a create
of a partial manifest refused as the API server refuses an invalid object), records every write
in order, and can be told to fail the next matching calls (409 conflicts, 404s, ...). With a
`kubefal_operator.cache.Cache` attached it also plays the watch: each write lands in the
operator's stores at once (``watching = False``: the stores lag behind until `deliver`).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import itertools
from collections.abc import Callable, Mapping
from typing import Any

from kubefal_operator import cache, kube

Manifest = dict[str, Any]
Key = tuple[str, str, str]
"""(kind, namespace, name)."""


@dataclasses.dataclass(frozen=True)
class Write:
    """One successful write: what was written to which object."""

    verb: str
    """apply, patch_status, delete, annotate or event."""
    kind: str
    name: str
    detail: Mapping[str, Any]


@dataclasses.dataclass
class Failure:
    verb: str
    kind: str | None
    name: str | None
    status: int
    reason: str
    remaining: int


def _merge(into: Manifest, patch: Mapping[str, Any]) -> Manifest:
    """A JSON merge patch (RFC 7386): maps merge, None deletes, everything else replaces."""
    merged = dict(into)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _replicas_owners(obj: Mapping[str, Any]) -> set[str]:
    return {
        str(entry["manager"])
        for entry in obj.get("metadata", {}).get("managedFields") or []
        if "f:replicas" in (entry.get("fieldsV1", {}).get("f:spec") or {})
    }


def _owned_by(managers: set[str]) -> list[Manifest]:
    return [
        {"manager": manager, "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        for manager in sorted(managers)
    ]


REQUIRED_ON_CREATE = {"Deployment": ("selector", "template")}
"""Spec fields without which the API server refuses to create the kind (422)."""


class FakeKube:
    """In-memory API objects behind the methods of `kube.KubeClient` the operator calls."""

    def __init__(self, stores: cache.Cache | None = None) -> None:
        self.objects: dict[Key, Manifest] = {}
        self.writes: list[Write] = []
        self.stores = stores
        self.watching = True
        """With ``stores``: deliver each write to them (False: not until `deliver`)."""
        self.watch_delay = 0.0
        """Seconds each watch event takes to reach the stores (0: at once)."""
        self.before_apply: list[Callable[[Mapping[str, Any]], None]] = []
        """Called with each manifest about to be applied (to look at the stores then)."""
        self._failures: list[Failure] = []
        self._versions = itertools.count(100)
        self._uids = itertools.count(1)

    # --- test controls --------------------------------------------------------------

    def fail(
        self,
        verb: str,
        *,
        kind: str | None = None,
        name: str | None = None,
        status: int = 409,
        reason: str = "Conflict",
        times: int = 1,
    ) -> None:
        """Make the next ``times`` calls of ``verb`` (on ``kind``/``name``, when given) fail
        with ``status``."""
        self._failures.append(Failure(verb, kind, name, status, reason, times))

    def create(self, manifest: Mapping[str, Any]) -> Manifest:
        """An object made by someone else (the user's FalApp, a runner pod)."""
        obj = copy.deepcopy(dict(manifest))
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._versions))
        self.objects[self._key(obj)] = obj
        self._watch(None, obj)
        return copy.deepcopy(obj)

    def edit(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> Manifest:
        """Someone else changes an object (a hand edit, the user's new spec)."""
        key = (kind, namespace, name)
        obj = _merge(self.objects[key], patch)
        meta = obj["metadata"]
        if kind == "FalApp" and "spec" in patch:
            meta["generation"] = int(meta.get("generation", 1)) + 1
        meta["resourceVersion"] = str(next(self._versions))
        self.objects[key] = obj
        self._watch(None, obj)
        return copy.deepcopy(obj)

    def remove(self, kind: str, namespace: str, name: str) -> Manifest:
        """Someone else deletes an object (returns its last state)."""
        obj = self.objects.pop((kind, namespace, name))
        self._watch("DELETED", obj)
        return obj

    def live(self, kind: str, namespace: str, name: str) -> Manifest | None:
        obj = self.objects.get((kind, namespace, name))
        return None if obj is None else copy.deepcopy(obj)

    def deliver(self) -> None:
        """The watch catches up: every object as it is now lands in the stores."""
        assert self.stores is not None
        for obj in self.objects.values():
            self._to_stores(None, obj)

    def verbs(self) -> list[tuple[str, str, str]]:
        """(verb, kind, name) of every write so far, in order."""
        return [(write.verb, write.kind, write.name) for write in self.writes]

    # --- KubeClient -----------------------------------------------------------------

    async def apply(
        self, manifest: Mapping[str, Any], *, field_manager: str = kube.FIELD_MANAGER
    ) -> Manifest:
        kind = str(manifest["kind"])
        meta = manifest["metadata"]
        self._maybe_fail("apply", kind, meta["name"])
        for hook in self.before_apply:
            hook(manifest)
        key = (kind, str(meta["namespace"]), str(meta["name"]))
        current = self.objects.get(key)
        spec = manifest.get("spec") or {}
        if current is None:
            missing = [field for field in REQUIRED_ON_CREATE.get(kind, ()) if field not in spec]
            if missing:
                raise kube.ApiError(
                    status=422, reason="Invalid", message=f"spec.{missing[0]}: Required value"
                )
            obj = copy.deepcopy(dict(manifest))
            obj["metadata"] = {**obj["metadata"], "uid": f"uid-{next(self._uids)}"}
            obj["metadata"]["generation"] = 1
            owners = {field_manager} if "replicas" in spec else set()
        else:
            obj = _merge(current, {k: v for k, v in manifest.items() if k != "metadata"})
            obj["metadata"] = _merge(
                current["metadata"], {k: v for k, v in meta.items() if k != "managedFields"}
            )
            owners = _replicas_owners(current)
            if "replicas" in spec:
                owners = {field_manager}  # force: the field changes hands
            elif field_manager in owners and "replicas" in obj.get("spec", {}):
                owners.discard(field_manager)  # its owner applied without it: dropped
                if not owners:
                    del obj["spec"]["replicas"]
        obj["metadata"]["managedFields"] = _owned_by(owners)
        if current is not None and self._same(current, obj):
            return copy.deepcopy(current)
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[key] = obj
        self._record("apply", kind, meta["name"], {"manager": field_manager, **manifest})
        self._watch(None, obj)
        return copy.deepcopy(obj)

    async def get(self, kind: kube.ResourceKind, *, namespace: str, name: str) -> Manifest | None:
        self._maybe_fail("get", kind.kind, name)
        return self.live(kind.kind, namespace, name)

    async def list(
        self, kind: kube.ResourceKind, *, namespace: str | None, label_selector: str = ""
    ) -> list[Manifest]:
        self._maybe_fail("list", kind.kind, None)
        return [
            copy.deepcopy(obj)
            for (obj_kind, obj_namespace, _), obj in self.objects.items()
            if obj_kind == kind.kind
            and namespace in (None, obj_namespace)
            and (not label_selector or label_selector in (obj["metadata"].get("labels") or {}))
        ]

    async def delete(
        self, kind: kube.ResourceKind, *, namespace: str, name: str, uid: str | None = None
    ) -> bool:
        self._maybe_fail("delete", kind.kind, name)
        current = self.objects.get((kind.kind, namespace, name))
        if current is None or (uid is not None and current["metadata"].get("uid") != uid):
            return False
        self.remove(kind.kind, namespace, name)
        self._record("delete", kind.kind, name, {"uid": uid})
        return True

    async def annotate(
        self, kind: kube.ResourceKind, *, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> Manifest | None:
        self._maybe_fail("annotate", kind.kind, name)
        if (kind.kind, namespace, name) not in self.objects:
            return None
        obj = self.edit(kind.kind, namespace, name, {"metadata": {"annotations": annotations}})
        self._record("annotate", kind.kind, name, dict(annotations))
        return obj

    async def patch_status(
        self, kind: kube.ResourceKind, *, namespace: str, name: str, status: Mapping[str, Any]
    ) -> Manifest | None:
        self._maybe_fail("patch_status", kind.kind, name)
        key = (kind.kind, namespace, name)
        if key not in self.objects:
            return None
        obj = _merge(self.objects[key], {"status": status})
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[key] = obj
        self._record("patch_status", kind.kind, name, dict(status))
        self._watch(None, obj)
        return copy.deepcopy(obj)

    async def post_event(
        self,
        *,
        involved: Mapping[str, Any],
        event_type: str,
        reason: str,
        message: str,
        now: datetime.datetime,
    ) -> None:
        detail = {"type": event_type, "reason": reason, "message": message}
        self._record("event", str(involved["kind"]), involved["metadata"]["name"], detail)

    async def close(self) -> None:
        return None

    # --- internals ------------------------------------------------------------------

    @staticmethod
    def _key(obj: Mapping[str, Any]) -> Key:
        meta = obj["metadata"]
        return (str(obj["kind"]), str(meta["namespace"]), str(meta["name"]))

    @staticmethod
    def _same(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
        def essence(obj: Mapping[str, Any]) -> Manifest:
            meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
            return {**obj, "metadata": meta}

        return essence(before) == essence(after)

    def _maybe_fail(self, verb: str, kind: str, name: str | None) -> None:
        for failure in self._failures:
            if (
                failure.remaining > 0
                and failure.verb == verb
                and failure.kind in (None, kind)
                and failure.name in (None, name)
            ):
                failure.remaining -= 1
                raise kube.ApiError(
                    status=failure.status,
                    reason=failure.reason,
                    message=f"injected {failure.status} on {verb} {kind} {name}",
                )

    def _record(self, verb: str, kind: str, name: str, detail: Mapping[str, Any]) -> None:
        self.writes.append(Write(verb, kind, name, copy.deepcopy(dict(detail))))

    def _watch(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        if self.stores is None or not self.watching:
            return
        if self.watch_delay > 0:
            later = copy.deepcopy(dict(obj))
            asyncio.get_running_loop().call_later(
                self.watch_delay, self._to_stores, event_type, later
            )
        else:
            self._to_stores(event_type, obj)

    def _to_stores(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        assert self.stores is not None
        kind = str(obj["kind"])
        if kind == "FalApp":
            self.stores.falapp(event_type, obj)
        elif kind == "Pod":
            self.stores.pod(event_type, obj)
        elif kind in cache.CHILD_KINDS:
            self.stores.child(kind, event_type, obj)
