"""Pure logic of two control-plane limits: requirements that are pip options are refused naming
the field, and ``--max-deploys`` leaves the other calls a worker."""

from __future__ import annotations

import grpc
import isolate_proto
import pytest
from google.protobuf import struct_pb2

from kubefal_controlplane import deploy, errors, settings


def _environment(requirements: list[object]) -> isolate_proto.EnvironmentDefinition:
    configuration = struct_pb2.Struct()
    configuration.update({"requirements": requirements})
    return isolate_proto.EnvironmentDefinition(kind="virtualenv", configuration=configuration)


@pytest.mark.parametrize(
    "option",
    ["--index-url=http://127.0.0.1:9/simple", "-r /etc/passwd", "-e ./local", " --pre"],
)
def test_a_pip_option_as_a_requirement_is_invalid_argument_naming_the_field(option: str) -> None:
    with pytest.raises(errors.RpcFailure) as raised:
        deploy.requirement_layers([_environment(["pyfiglet", option])])

    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith("environments[0].requirements: ")
    assert "is a pip option" in raised.value.message


@pytest.mark.parametrize("nested", [False, True])
def test_a_layer_of_too_many_requirements_is_refused_before_its_entries_are_read(
    nested: bool,
) -> None:
    # Each entry was compared with every one kept before it: 50,000 took seconds, a 4 MiB
    # message's worth minutes of a worker.
    entries: list[object] = [f"p{i}" for i in range(50_000)]
    with pytest.raises(errors.RpcFailure) as raised:
        deploy.requirement_layers([_environment([entries] if nested else entries)])

    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith("environments: requirements: 50000 in one layer")


def test_requirements_and_layers_without_options_are_kept() -> None:
    layers = deploy.requirement_layers(
        [_environment([["torch==2.5.1"], ["diffusers>=0.30", "pyfiglet"]])]
    )

    assert layers == [["torch==2.5.1"], ["diffusers>=0.30", "pyfiglet"]]


@pytest.mark.parametrize(
    ("max_workers", "max_deploys", "slots"), [(8, 2, 2), (8, 20, 7), (2, 2, 1), (1, 2, 1)]
)
def test_deploys_are_bounded_below_the_workers(
    max_workers: int, max_deploys: int, slots: int
) -> None:
    loaded = settings.Settings(
        local_credentials=True, max_workers=max_workers, max_deploys=max_deploys
    )

    assert loaded.deploy_slots == slots
    assert settings.from_args(["--local-credentials"]).max_deploys == settings.DEFAULT_MAX_DEPLOYS
