"""The operator's in-memory stores: grouped like kopf's indexes, following moves and deletes."""

from __future__ import annotations

from typing import Any

from kubefal_operator import cache


def _child(name: str, app: str | None, *, namespace: str = "ns", version: str = "1") -> Any:
    labels = {} if app is None else {"kubefal.io/app": app}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "resourceVersion": version,
            "managedFields": [{"manager": "x", "fieldsV1": {"f:spec": {"f:ports": {}}}}],
        },
        "spec": {"clusterIP": "None"},
    }


def test_children_are_grouped_by_their_app_and_trimmed() -> None:
    stores = cache.Cache()
    stores.child("Service", None, _child("a", "a"))
    live = stores.indexes.live(("ns", "a"))
    assert live.children["Service"]["spec"] == {"clusterIP": "None"}
    assert "managedFields" not in live.children["Service"]["metadata"]
    assert stores.indexes.live(("ns", "b")).children == {}


def test_a_modified_child_replaces_the_stored_one_and_a_deleted_one_goes() -> None:
    stores = cache.Cache()
    stores.child("Service", None, _child("a", "a", version="1"))
    stores.child("Service", "MODIFIED", _child("a", "a", version="2"))
    services = stores.indexes.children["Service"][("ns", "a")]
    assert [s["metadata"]["resourceVersion"] for s in services] == ["2"]
    stores.child("Service", "DELETED", _child("a", "a", version="3"))
    assert ("ns", "a") not in stores.indexes.children["Service"]
    assert stores.indexes.live(("ns", "a")).children == {}


def test_a_child_whose_label_changes_moves_to_its_new_app_or_out() -> None:
    stores = cache.Cache()
    stores.child("Service", None, _child("x", "a"))
    stores.child("Service", "MODIFIED", _child("x", "b"))
    assert ("ns", "a") not in stores.indexes.children["Service"]
    assert len(stores.indexes.children["Service"][("ns", "b")]) == 1
    stores.child("Service", "MODIFIED", _child("x", None))
    assert len(stores.indexes.children["Service"]) == 0


def test_falapps_pods_and_nodes() -> None:
    stores = cache.Cache()
    app = {
        "apiVersion": "kubefal.io/v1alpha1",
        "kind": "FalApp",
        "metadata": {"name": "a", "namespace": "ns"},
        "spec": {"app": "x.py::A"},
    }
    stores.falapp(None, app)
    assert stores.indexes.app(("ns", "a")) is not None
    assert [body["metadata"]["name"] for body in stores.indexes.apps()] == ["a"]
    pod = {
        "metadata": {"name": "a-1", "namespace": "ns", "labels": {"kubefal.io/app": "a"}},
        "spec": {"nodeName": "gpu-0"},
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }
    stores.pod(None, pod)
    stores.node(None, {"metadata": {"name": "gpu-0", "labels": {"gpu": "h100"}}})
    live = stores.indexes.live(("ns", "a"))
    assert [p["status"]["podIP"] for p in live.pods] == ["10.0.0.1"]
    assert live.node_labels == {"gpu-0": {"gpu": "h100"}}
    stores.pod("DELETED", pod)
    stores.node("DELETED", {"metadata": {"name": "gpu-0"}})
    stores.falapp("DELETED", app)
    live = stores.indexes.live(("ns", "a"))
    assert (live.pods, live.node_labels) == ([], {})
    assert stores.indexes.app(("ns", "a")) is None
