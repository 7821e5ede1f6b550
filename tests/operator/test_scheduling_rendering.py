"""Node affinity from machine types and regions: where runners may land, and in which order."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kubefal_api import machines, v1alpha1
from kubefal_operator.render import scheduling

MakeApp = Callable[..., v1alpha1.FalApp]
"""The ``make_app`` fixture (tests/operator/conftest.py)."""


def test_weights_fall_with_position_and_stay_valid() -> None:
    assert scheduling.preference_weights(1) == [100]
    assert scheduling.preference_weights(2) == [100, 50]
    assert scheduling.preference_weights(4) == [100, 75, 50, 25]
    many = scheduling.preference_weights(8)
    assert many == sorted(many, reverse=True)
    assert len(set(many)) == 8
    assert all(1 <= weight <= 100 for weight in many)


def test_fallback_list_requires_any_listed_type_and_prefers_them_in_order(
    make_app: MakeApp, catalogue: machines.MachineCatalogue
) -> None:
    app = make_app(machineTypes=["GPU-H100", "GPU-H200"], numGpus=8)
    node_affinity = scheduling.affinity(app.spec, catalogue=catalogue)
    assert node_affinity is not None
    required = node_affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    products = [term["matchExpressions"][0]["values"] for term in required["nodeSelectorTerms"]]
    assert products == [["NVIDIA-H100-80GB-HBM3"], ["NVIDIA-H200"]]
    assert all(
        term["matchExpressions"][0]["key"] == "nvidia.com/gpu.product"
        for term in required["nodeSelectorTerms"]
    )
    preferred = node_affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [
        (item["weight"], item["preference"]["matchExpressions"][0]["values"]) for item in preferred
    ] == [(100, ["NVIDIA-H100-80GB-HBM3"]), (50, ["NVIDIA-H200"])]


def test_order_of_machine_types_decides_the_highest_weight(
    make_app: MakeApp, catalogue: machines.MachineCatalogue
) -> None:
    app = make_app(machineTypes=["GPU-H200", "GPU-A100", "GPU-H100"])
    node_affinity = scheduling.affinity(app.spec, catalogue=catalogue)
    assert node_affinity is not None
    preferred = node_affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    first = preferred[0]
    assert first["weight"] == 100
    assert first["preference"]["matchExpressions"][0]["values"] == ["NVIDIA-H200"]
    assert preferred[1]["preference"]["matchExpressions"][0]["values"] == [
        "NVIDIA-A100-SXM4-40GB",
        "NVIDIA-A100-SXM4-80GB",
    ]
    assert preferred[0]["weight"] > preferred[1]["weight"] > preferred[2]["weight"]


def test_single_gpu_type_is_required_without_a_pointless_preference(
    make_app: MakeApp, catalogue: machines.MachineCatalogue
) -> None:
    app = make_app(machineTypes=["GPU-H100"], numGpus=2)
    node_affinity = scheduling.affinity(app.spec, catalogue=catalogue)
    assert node_affinity is not None
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in node_affinity["nodeAffinity"]


def test_regions_are_required_together_with_every_machine_type(
    make_app: MakeApp, catalogue: machines.MachineCatalogue
) -> None:
    app = make_app(machineTypes=["GPU-H100", "GPU-H200"], regions=["us-east", "eu-west"])
    node_affinity = scheduling.affinity(app.spec, catalogue=catalogue)
    assert node_affinity is not None
    terms = node_affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert len(terms) == 2
    for term in terms:
        assert {
            "key": "topology.kubernetes.io/region",
            "operator": "In",
            "values": ["us-east", "eu-west"],
        } in term["matchExpressions"]


def test_cpu_app_without_regions_has_no_affinity(
    make_app: MakeApp, catalogue: machines.MachineCatalogue
) -> None:
    assert scheduling.affinity(make_app(machineTypes=["S"]).spec, catalogue=catalogue) is None


def test_cpu_app_with_regions_requires_only_the_region(
    make_app: MakeApp, catalogue: machines.MachineCatalogue
) -> None:
    app = make_app(machineTypes=["S"], regions=["us-west"])
    node_affinity = scheduling.affinity(app.spec, catalogue=catalogue)
    assert node_affinity == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "topology.kubernetes.io/region",
                                "operator": "In",
                                "values": ["us-west"],
                            }
                        ]
                    }
                ]
            }
        }
    }


def test_catalogue_node_selector_is_part_of_the_required_term(make_app: MakeApp) -> None:
    catalogue = machines.MachineCatalogue(
        machine_types={
            "S": machines.MachineType(cpu="1", memory="1Gi", node_selector={"pool": "cpu"}),
        }
    )
    node_affinity = scheduling.affinity(make_app(machineTypes=["S"]).spec, catalogue=catalogue)
    assert node_affinity is not None
    term = node_affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]
    assert term == {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["cpu"]}]}


def test_unknown_machine_type_is_refused(
    make_app: MakeApp, catalogue: machines.MachineCatalogue
) -> None:
    app = make_app(machineTypes=["GPU-TPU9"])
    with pytest.raises(machines.UnknownMachineTypeError, match="GPU-TPU9"):
        scheduling.affinity(app.spec, catalogue=catalogue)
