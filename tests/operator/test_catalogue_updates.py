"""The machine catalogue from its ConfigMap: parsing, fallback, and which types changed."""

from __future__ import annotations

import pytest

from kubefal_api import machines
from kubefal_operator import livestate
from kubefal_operator.render import catalogue as catalogue_render


def test_absent_config_map_falls_back_to_the_defaults(caplog: pytest.LogCaptureFixture) -> None:
    catalogue, source = livestate.parse_catalogue(None, where="kubefal-system/kubefal-machines")
    assert catalogue == machines.default_catalogue()
    assert source == "built-in defaults"
    assert "not found" in caplog.text


def test_invalid_config_map_falls_back_to_the_defaults(caplog: pytest.LogCaptureFixture) -> None:
    config_map = {"data": {"machines.yaml": "machineTypes: {GPU-X: {cpu: lots}}"}}
    catalogue, source = livestate.parse_catalogue(config_map, where="ns/cm")
    assert catalogue == machines.default_catalogue()
    assert source == "built-in defaults"
    assert "invalid" in caplog.text


def test_config_map_catalogue_is_used_and_named_as_the_source() -> None:
    custom = machines.MachineCatalogue(
        machine_types={"S": machines.MachineType(cpu="250m", memory="256Mi")}
    )
    config_map = catalogue_render.catalogue_config_map(namespace="ns", name="cm", catalogue=custom)
    catalogue, source = livestate.parse_catalogue(config_map, where="ns/cm")
    assert catalogue == custom
    assert source == "ns/cm"


def test_replacing_the_catalogue_names_exactly_the_changed_types() -> None:
    state = livestate.CatalogueState(catalogue=machines.default_catalogue(), source="defaults")
    types = dict(machines.default_catalogue().machine_types)
    types["GPU-H100"] = machines.MachineType(
        cpu="16", memory="200Gi", gpu_products=("NVIDIA-H100-80GB-HBM3",)
    )
    del types["XS"]
    types["GPU-L4"] = machines.MachineType(cpu="4", memory="16Gi", gpu_products=("NVIDIA-L4",))
    changed = state.replace(machines.MachineCatalogue(machine_types=types), source="ns/cm")
    assert changed == {"GPU-H100", "XS", "GPU-L4"}
    assert state.source == "ns/cm"
    assert state.replace(machines.MachineCatalogue(machine_types=types), source="ns/cm") == set()
