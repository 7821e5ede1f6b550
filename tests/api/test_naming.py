"""Child names, labels and selectors the operator, gateway and CLI share."""

from __future__ import annotations

import re

import pytest

from kubefal_api import naming


@pytest.mark.parametrize(
    "builder",
    [
        naming.deployment_name,
        naming.service_name,
        naming.network_policy_name,
        naming.pod_disruption_budget_name,
        naming.scaled_object_name,
        naming.horizontal_pod_autoscaler_name,
    ],
)
def test_children_are_named_after_the_falapp(builder: object) -> None:
    assert callable(builder)
    assert builder("sdxl-turbo") == "sdxl-turbo"


def test_the_runner_selector_is_a_subset_of_the_child_labels() -> None:
    selector = naming.runner_selector("sdxl")
    labels = naming.child_labels("sdxl")
    assert selector.items() <= labels.items()
    assert labels[naming.LABEL_MANAGED_BY] == "kubefal"
    assert labels["kubefal.io/app"] == "sdxl"


def test_the_gateway_selector_does_not_select_runners() -> None:
    gateway = naming.gateway_selector()
    runner_labels = naming.child_labels("sdxl")
    assert not gateway.items() <= runner_labels.items()


def test_app_id_is_namespace_slash_name() -> None:
    assert naming.app_id("team-a", "sdxl") == "team-a/sdxl"


@pytest.mark.parametrize(
    ("name", "valid"),
    [("sdxl", True), ("a-1", True), ("1app", False), ("App", False), ("a" * 64, False)],
)
def test_app_names_are_dns_1035_labels(name: str, valid: bool) -> None:
    matches = re.fullmatch(naming.APP_NAME_PATTERN, name) is not None
    assert (matches and len(name) <= naming.MAX_APP_NAME_LENGTH) is valid


def test_label_values_fit_kubernetes_limits() -> None:
    for key, value in naming.child_labels("a" * naming.MAX_APP_NAME_LENGTH).items():
        assert len(value) <= 63, key


def test_apps_sharing_a_long_prefix_get_a_build_secret_each() -> None:
    first, second = ("a" * (naming.MAX_APP_NAME_LENGTH - 1) + end for end in "bc")
    names = {naming.build_secret_name(app) for app in (first, second)}

    assert len(names) == 2
    for name in names:  # a DNS subdomain: what a Secret's name must be
        assert len(name) <= 253 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)


def test_an_owner_reference_names_the_falapp_and_only_a_controller_blocks_deletion() -> None:
    plain = {"apiVersion": "kubefal.io/v1alpha1", "kind": "FalApp", "name": "demo", "uid": "u-1"}

    assert naming.owner_reference("demo", "u-1") == plain
    assert naming.owner_reference("demo", "u-1", controller=True) == {
        **plain,
        "controller": True,
        "blockOwnerDeletion": True,
    }
