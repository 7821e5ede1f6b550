"""The operator's in-memory copy of what it reads: FalApps, children, runner pods, nodes.

Why not kopf indexes: before any handler runs, kopf waits until every listed object of
every indexed kind has been through its index function, and that wait wakes every waiting
object whenever one more is indexed, so start-up is quadratic in the objects: a restart
with 1,000 apps (4,000 objects) spent over a minute in it. The operator fills these stores
itself instead: one LIST per kind in the start-up handler (before kopf's watches begin, so
a reconcile never sees a child as missing that exists), then every watch event updates
its store first thing in its handler. The stores hold the trimmed views of
``livestate.object_view`` and ``livestate.pod_view``, as the indexes did.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import aiohttp

from kubefal_api import naming
from kubefal_operator import kube, livestate

logger = logging.getLogger(__name__)

K = TypeVar("K")
Ident = tuple[str, str]
"""(namespace, name) of one object."""


class Store(Mapping[K, Collection[Mapping[str, Any]]], Generic[K]):
    """Objects grouped by a key (the owning FalApp, or a node's name), as kopf's indexes
    group them: ``store[key]`` is the collection of objects with that key."""

    def __init__(self) -> None:
        self._by_key: dict[K, dict[Ident, Mapping[str, Any]]] = {}
        self._keys: dict[Ident, K] = {}

    def __getitem__(self, key: K) -> Collection[Mapping[str, Any]]:
        return list(self._by_key[key].values())

    def __iter__(self) -> Iterator[K]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)

    def put(self, key: K | None, ident: Ident, view: Mapping[str, Any]) -> None:
        """Store ``view`` under ``key`` (None: under no key, e.g. its label was removed)."""
        previous = self._keys.get(ident)
        if previous is not None and previous != key:
            self.remove(ident)
        if key is None:
            return
        self._by_key.setdefault(key, {})[ident] = view
        self._keys[ident] = key

    def remove(self, ident: Ident) -> None:
        key = self._keys.pop(ident, None)
        if key is None:
            return
        group = self._by_key.get(key)
        if group is not None:
            group.pop(ident, None)
            if not group:
                del self._by_key[key]


def ident(body: Mapping[str, Any]) -> Ident:
    meta = body.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


CHILD_KINDS: Mapping[str, kube.ResourceKind] = kube.CHILDREN
"""Every child kind the operator keeps in memory, and where it lives in the API."""


class Cache:
    """All stores, and the `livestate.Indexes` view the reconciler reads."""

    def __init__(self) -> None:
        self.falapps: Store[livestate.Key] = Store()
        self.children: dict[str, Store[livestate.Key]] = {kind: Store() for kind in CHILD_KINDS}
        self.pods: Store[livestate.Key] = Store()
        self.nodes: Store[str] = Store()
        self.indexes = livestate.Indexes(
            falapps=self.falapps, children=self.children, pods=self.pods, nodes=self.nodes
        )

    # --- watch events ---------------------------------------------------------------

    def falapp(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        if event_type == "DELETED":
            self.falapps.remove(ident(body))
        else:
            self.falapps.put(livestate.app_key(body), ident(body), livestate.object_view(body))

    def child(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        store = self.children[kind]
        if event_type == "DELETED":
            store.remove(ident(body))
        else:
            store.put(livestate.owner_key(body), ident(body), livestate.object_view(body))

    def pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        if event_type == "DELETED":
            self.pods.remove(ident(body))
        else:
            self.pods.put(livestate.owner_key(body), ident(body), livestate.pod_view(body))

    def node(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        name = ident(body)[1]
        if event_type == "DELETED":
            self.nodes.remove(("", name))
        else:
            labels = dict((body.get("metadata") or {}).get("labels") or {})
            self.nodes.put(name, ("", name), labels)

    # --- start-up -------------------------------------------------------------------

    async def prefill(self, client: kube.KubeClient, *, namespaces: Sequence[str]) -> None:
        """Fill every store with one LIST per kind (and namespace, when the operator serves
        some by name). A kind that cannot be listed (KEDA not installed, no permission) is
        left to the watch: its first events fill the store."""
        exact = [name for name in namespaces if not _is_pattern(name)]
        scopes: list[str | None] = (
            list(exact) if exact and len(exact) == len(namespaces) else [None]
        )
        positive = [name for name in namespaces if not name.startswith("!")]
        negative = [name[1:] for name in namespaces if name.startswith("!")]

        def accept(namespace: str) -> bool:
            """kopf's namespace patterns: globs, and ``!glob`` to exclude."""
            if positive and not any(fnmatch.fnmatchcase(namespace, p) for p in positive):
                return False
            return not any(fnmatch.fnmatchcase(namespace, p) for p in negative)

        selector = naming.LABEL_APP

        async def fill(
            kind: kube.ResourceKind,
            update: Callable[[Mapping[str, Any]], None],
            *,
            label_selector: str = "",
            namespaced: bool = True,
        ) -> None:
            for scope in scopes if namespaced else [None]:
                try:
                    items = await client.list(kind, namespace=scope, label_selector=label_selector)
                except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
                    logger.info("not pre-listing %s (the watch fills it): %s", kind.plural, error)
                    return
                for item in items:
                    if not namespaced or accept(ident(item)[0]):
                        update({"apiVersion": kind.api_version, "kind": kind.kind, **item})

        await fill(kube.FALAPPS, lambda body: self.falapp(None, body))
        for kind_name, kind in CHILD_KINDS.items():
            await fill(
                kind,
                lambda body, kind_name=kind_name: self.child(kind_name, None, body),  # type: ignore[misc]
                label_selector=selector,
            )
        await fill(kube.PODS, lambda body: self.pod(None, body), label_selector=selector)
        await fill(kube.NODES, lambda body: self.node(None, body), namespaced=False)


def _is_pattern(namespace: str) -> bool:
    return any(character in namespace for character in "*?[!")
