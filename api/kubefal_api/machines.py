"""The machine catalogue: what each fal machine type means on this cluster.

A FalApp names machine types (``S``, ``GPU-H100``, ...); the catalogue maps each to the CPU and
memory a runner requests and to the nodes it may run on. Platform teams edit it in a ConfigMap
(data key :data:`kubefal_api.naming.MACHINE_CATALOGUE_KEY`, YAML, written by the chart from
:func:`default_configmap_data`); the operator reads it with :func:`load_from_configmap_data`
and re-renders the apps that use a changed entry.

Defaults follow fal's machine table (docs/architecture.md, "Machine catalogue"). GPU types select
nodes by the NVIDIA GPU Feature Discovery label ``nvidia.com/gpu.product``; one type may accept
several products (the 40 GB and 80 GB A100). CPU and memory are per runner, whatever ``numGpus`` is.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Final

import pydantic
import pydantic.alias_generators
import yaml

from kubefal_api import naming, v1alpha1

GPU_RESOURCE: Final = "nvidia.com/gpu"
"""Extended resource the NVIDIA device plugin advertises."""
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
"""Node label (GPU Feature Discovery) naming the GPU model."""

_QUANTITY_PATTERN: Final = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_QUANTITY_SUFFIXES: Final[Mapping[str, decimal.Decimal]] = {
    "": decimal.Decimal(1),
    "m": decimal.Decimal("0.001"),
    "k": decimal.Decimal(10) ** 3,
    "M": decimal.Decimal(10) ** 6,
    "G": decimal.Decimal(10) ** 9,
    "T": decimal.Decimal(10) ** 12,
    "P": decimal.Decimal(10) ** 15,
    "E": decimal.Decimal(10) ** 18,
    "Ki": decimal.Decimal(2) ** 10,
    "Mi": decimal.Decimal(2) ** 20,
    "Gi": decimal.Decimal(2) ** 30,
    "Ti": decimal.Decimal(2) ** 40,
    "Pi": decimal.Decimal(2) ** 50,
    "Ei": decimal.Decimal(2) ** 60,
}

Quantity = Annotated[str, pydantic.StringConstraints(pattern=_QUANTITY_PATTERN)]
"""A Kubernetes resource quantity in the plain forms the catalogue uses ("500m", "12", "1Gi")."""


class UnknownMachineTypeError(LookupError):
    """A FalApp names a machine type the catalogue does not define."""

    def __init__(self, machine_type: str, known: Iterable[str]) -> None:
        self.machine_type = machine_type
        self.known = sorted(known)
        super().__init__(
            f"machine type {machine_type!r} is not in the machine catalogue "
            f"(known: {', '.join(self.known)})"
        )


def parse_quantity(quantity: str) -> decimal.Decimal:
    """The value of a Kubernetes quantity in base units (cores, bytes)."""
    match = re.fullmatch(_QUANTITY_PATTERN, quantity)
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    suffix = match.group(2) or ""
    number = quantity[: len(quantity) - len(suffix)]
    return decimal.Decimal(number) * _QUANTITY_SUFFIXES[suffix]


class _CatalogueModel(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        alias_generator=pydantic.alias_generators.to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=True,
    )


class MachineType(_CatalogueModel):
    """One machine type: what a runner requests and where it may run."""

    cpu: Quantity
    """CPU a runner requests, e.g. "500m" or "12"."""
    memory: Quantity
    """Memory a runner requests, e.g. "512Mi" or "112Gi"."""
    gpu_products: tuple[str, ...] = ()
    """Accepted values of the node label nvidia.com/gpu.product; non-empty makes it a GPU type
    (runners get nvidia.com/gpu limits and the GPU toleration)."""
    node_selector: dict[str, str] = pydantic.Field(default_factory=dict)
    """Further node labels a runner requires, e.g. a CPU node pool."""

    @property
    def is_gpu(self) -> bool:
        """True when the type selects GPU nodes."""
        return bool(self.gpu_products)

    @property
    def cpu_cores(self) -> decimal.Decimal:
        """CPU in cores."""
        return parse_quantity(self.cpu)

    @property
    def memory_bytes(self) -> decimal.Decimal:
        """Memory in bytes."""
        return parse_quantity(self.memory)


class MachineCatalogue(_CatalogueModel):
    """Every machine type the cluster offers, keyed by fal's name for it."""

    gpu_resource: str = GPU_RESOURCE
    """Extended resource a GPU runner puts in its limits."""
    gpu_product_label: str = GPU_PRODUCT_LABEL
    """Node label matched against a type's gpuProducts."""
    machine_types: dict[v1alpha1.MachineTypeName, MachineType]
    """Machine types by name."""

    @pydantic.model_validator(mode="after")
    def _gpu_names_match_gpu_types(self) -> MachineCatalogue:
        for name, machine in self.machine_types.items():
            if v1alpha1.is_gpu_machine_type(name) != machine.is_gpu:
                raise ValueError(
                    f"machine type {name!r}: GPU types are named "
                    f"{v1alpha1.GPU_MACHINE_TYPE_PREFIX}* and need gpuProducts; others must "
                    "have none"
                )
        return self

    def get(self, name: str) -> MachineType:
        """The machine type called ``name``; raises :class:`UnknownMachineTypeError`."""
        try:
            return self.machine_types[name]
        except KeyError:
            raise UnknownMachineTypeError(name, self.machine_types) from None

    def resolve(self, names: Iterable[str]) -> list[MachineType]:
        """The machine types of an ordered list, in order; raises on the first unknown one."""
        return [self.get(name) for name in names]

    def smallest(self, names: Iterable[str]) -> MachineType:
        """The type with the least CPU, then memory, among ``names``: a runner sized by it fits
        on every listed type."""
        machines = self.resolve(names)
        if not machines:
            raise ValueError("no machine types given")
        return min(machines, key=lambda machine: (machine.cpu_cores, machine.memory_bytes))

    def to_yaml(self) -> str:
        """The catalogue as the YAML stored in the ConfigMap."""
        document = {
            "gpuResource": self.gpu_resource,
            "gpuProductLabel": self.gpu_product_label,
            "machineTypes": {
                name: machine.model_dump(mode="json", by_alias=True, exclude_defaults=True)
                for name, machine in self.machine_types.items()
            },
        }
        return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)

    @classmethod
    def from_yaml(cls, text: str) -> MachineCatalogue:
        """Parse the YAML stored in the ConfigMap."""
        document = yaml.safe_load(text)
        if not isinstance(document, dict):
            raise ValueError("the machine catalogue must be a YAML mapping")
        return cls.model_validate(document)


def _gpu(cpu: str, memory: str, *products: str) -> MachineType:
    return MachineType(cpu=cpu, memory=memory, gpu_products=products)


def default_catalogue() -> MachineCatalogue:
    """fal's machine table as a catalogue (docs/architecture.md, "Machine catalogue")."""
    return MachineCatalogue(
        machine_types={
            "XS": MachineType(cpu="500m", memory="512Mi"),
            "S": MachineType(cpu="1", memory="1Gi"),
            "M": MachineType(cpu="2", memory="2Gi"),
            "L": MachineType(cpu="4", memory="15Gi"),
            "GPU-A6000": _gpu("4", "18Gi", "NVIDIA-RTX-A6000"),
            "GPU-A100": _gpu("12", "60Gi", "NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB"),
            "GPU-H100": _gpu("12", "112Gi", "NVIDIA-H100-80GB-HBM3"),
            "GPU-H200": _gpu("12", "112Gi", "NVIDIA-H200"),
            "GPU-B200": _gpu("24", "112Gi", "NVIDIA-B200"),
        }
    )


def load_from_configmap_data(
    data: Mapping[str, str], *, key: str = naming.MACHINE_CATALOGUE_KEY
) -> MachineCatalogue:
    """Parse the catalogue from a ConfigMap's ``data``; raises KeyError without ``key``."""
    return MachineCatalogue.from_yaml(data[key])


def configmap_data(
    catalogue: MachineCatalogue, *, key: str = naming.MACHINE_CATALOGUE_KEY
) -> dict[str, str]:
    """The ``data`` of a ConfigMap holding ``catalogue``."""
    return {key: catalogue.to_yaml()}


def default_configmap_data() -> dict[str, str]:
    """The ``data`` of the default catalogue ConfigMap (what the chart installs)."""
    return configmap_data(default_catalogue())
