"""The machine catalogue: fal's defaults, ConfigMap round trip, lookups and sizing."""

from __future__ import annotations

import decimal

import pydantic
import pytest
import yaml

from kubefal_api import machines, naming


@pytest.fixture(scope="module")
def catalogue() -> machines.MachineCatalogue:
    return machines.default_catalogue()


@pytest.mark.parametrize(
    ("name", "cpu", "memory"),
    [
        ("XS", "500m", "512Mi"),
        ("S", "1", "1Gi"),
        ("M", "2", "2Gi"),
        ("L", "4", "15Gi"),
        ("GPU-A100", "12", "60Gi"),
        ("GPU-H100", "12", "112Gi"),
        ("GPU-H200", "12", "112Gi"),
        ("GPU-B200", "24", "112Gi"),
    ],
)
def test_defaults_follow_fals_machine_table(
    catalogue: machines.MachineCatalogue, name: str, cpu: str, memory: str
) -> None:
    machine = catalogue.get(name)
    assert (machine.cpu, machine.memory) == (cpu, memory)


@pytest.mark.parametrize(
    ("name", "products"),
    [
        ("GPU-A6000", ("NVIDIA-RTX-A6000",)),
        ("GPU-A100", ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB")),
        ("GPU-H100", ("NVIDIA-H100-80GB-HBM3",)),
        ("GPU-H200", ("NVIDIA-H200",)),
        ("GPU-B200", ("NVIDIA-B200",)),
    ],
)
def test_gpu_types_select_nodes_by_gpu_product(
    catalogue: machines.MachineCatalogue, name: str, products: tuple[str, ...]
) -> None:
    machine = catalogue.get(name)
    assert machine.is_gpu
    assert machine.gpu_products == products
    assert catalogue.gpu_product_label == "nvidia.com/gpu.product"
    assert catalogue.gpu_resource == "nvidia.com/gpu"


def test_cpu_types_select_no_gpu_nodes(catalogue: machines.MachineCatalogue) -> None:
    assert not any(catalogue.get(name).is_gpu for name in ("XS", "S", "M", "L"))


def test_default_configmap_data_round_trips(catalogue: machines.MachineCatalogue) -> None:
    data = machines.default_configmap_data()
    assert list(data) == [naming.MACHINE_CATALOGUE_KEY]
    assert machines.load_from_configmap_data(data) == catalogue


def test_configmap_yaml_is_what_a_platform_team_edits() -> None:
    document = yaml.safe_load(machines.default_configmap_data()[naming.MACHINE_CATALOGUE_KEY])
    assert document["machineTypes"]["S"] == {"cpu": "1", "memory": "1Gi"}
    assert document["machineTypes"]["GPU-H200"]["gpuProducts"] == ["NVIDIA-H200"]


def test_an_edited_catalogue_is_loaded_with_its_changes() -> None:
    text = """
machineTypes:
  S: {cpu: "2", memory: 4Gi, nodeSelector: {pool: cpu}}
  GPU-L40S: {cpu: "8", memory: 64Gi, gpuProducts: [NVIDIA-L40S]}
"""
    catalogue = machines.load_from_configmap_data({naming.MACHINE_CATALOGUE_KEY: text})
    assert catalogue.get("S").node_selector == {"pool": "cpu"}
    assert catalogue.get("GPU-L40S").gpu_products == ("NVIDIA-L40S",)
    assert catalogue.gpu_resource == machines.GPU_RESOURCE


@pytest.mark.parametrize(
    "text",
    [
        "machineTypes: {GPU-X: {cpu: '1', memory: 1Gi}}",
        "machineTypes: {S: {cpu: '1', memory: 1Gi, gpuProducts: [NVIDIA-H100-80GB-HBM3]}}",
        "machineTypes: {S: {cpu: one, memory: 1Gi}}",
        "machineTypes: {S: {cpu: '1', memory: 1Gi, gpus: 2}}",
    ],
)
def test_inconsistent_catalogues_are_rejected(text: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        machines.MachineCatalogue.from_yaml(text)


def test_a_catalogue_that_is_not_a_mapping_is_rejected() -> None:
    with pytest.raises(ValueError, match="YAML mapping"):
        machines.MachineCatalogue.from_yaml("- S\n- M\n")


def test_missing_configmap_key_raises_key_error() -> None:
    with pytest.raises(KeyError):
        machines.load_from_configmap_data({})


def test_unknown_machine_type_names_the_known_ones(catalogue: machines.MachineCatalogue) -> None:
    with pytest.raises(machines.UnknownMachineTypeError, match="GPU-T4") as raised:
        catalogue.resolve(["GPU-H100", "GPU-T4"])
    assert "GPU-H100" in raised.value.known


def test_resolve_keeps_the_order_of_preference(catalogue: machines.MachineCatalogue) -> None:
    resolved = catalogue.resolve(["GPU-H200", "GPU-A100"])
    assert resolved == [catalogue.get("GPU-H200"), catalogue.get("GPU-A100")]


def test_smallest_type_sizes_a_runner_that_fits_every_listed_type(
    catalogue: machines.MachineCatalogue,
) -> None:
    assert catalogue.smallest(["GPU-B200", "GPU-A100", "GPU-H100"]) == catalogue.get("GPU-A100")
    assert catalogue.smallest(["GPU-H100", "GPU-H200"]) == catalogue.get("GPU-H100")


@pytest.mark.parametrize(
    ("quantity", "value"),
    [
        ("500m", decimal.Decimal("0.5")),
        ("12", decimal.Decimal(12)),
        ("1Gi", decimal.Decimal(2**30)),
        ("512Mi", decimal.Decimal(2**29)),
        ("1.5G", decimal.Decimal(1_500_000_000)),
    ],
)
def test_quantities_parse_to_base_units(quantity: str, value: decimal.Decimal) -> None:
    assert machines.parse_quantity(quantity) == value


def test_a_malformed_quantity_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        machines.parse_quantity("1 GiB")
