"""One table of the kinds the operator handles (`kube.CHILDREN`, `kube.WATCHED`): the kopf
handlers, the in-memory stores and the child names all follow it, so a new child kind is added
in one place or the operator does not start to watch it."""

from __future__ import annotations

from kopf._cogs.structs import references

from kubefal_api import naming
from kubefal_operator import cache, handlers, kube, livestate


def _handlers() -> dict[references.Selector, list[str]]:
    registered: dict[references.Selector, list[str]] = {}
    for handler in handlers.REGISTRY._watching.get_all_handlers():
        assert handler.selector is not None
        registered.setdefault(handler.selector, []).append(str(handler.id))
    return registered


def test_the_operator_watches_exactly_the_kinds_of_the_table() -> None:
    watched = {references.Selector(*kind.selector) for kind in kube.WATCHED}
    assert set(_handlers()) == watched


def test_every_child_kind_has_the_child_handler_a_store_and_a_name() -> None:
    registered = _handlers()
    for kind in kube.CHILDREN.values():
        assert registered[references.Selector(*kind.selector)] == ["child_changed"]
    assert set(cache.Cache().children) == set(kube.CHILDREN)
    assert set(livestate.CHILD_NAMES) == set(kube.CHILDREN)
    for name in livestate.CHILD_NAMES.values():
        assert name("demo") == "demo"


def test_child_events_are_filtered_on_the_app_label() -> None:
    for handler in handlers.REGISTRY._watching.get_all_handlers():
        if handler.id == "child_changed":
            assert handler.labels is not None and naming.LABEL_APP in handler.labels


def test_a_selector_names_the_group_version_and_plural() -> None:
    assert kube.DEPLOYMENTS.selector == ("apps/v1", "deployments")
    assert (kube.PODS.group, kube.FALAPPS.group) == ("", "kubefal.io")
    assert references.Selector(*kube.PODS.selector) == references.Selector("v1", "pods")
