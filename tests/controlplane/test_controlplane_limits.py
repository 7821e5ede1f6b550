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
