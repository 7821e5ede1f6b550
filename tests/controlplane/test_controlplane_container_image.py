"""fal deploy of a fal.ContainerImage app: the control plane turns the SDK's container
environment into spec.containerImage (the operator builds it), refuses what it cannot carry
with the field named, and keeps build secrets out of the FalApp (pure logic; the build itself
is proven in e2e/test_container_image_build.py)."""

from __future__ import annotations

from typing import Any

import grpc
import isolate_proto
import pytest
from google.protobuf import struct_pb2

from kubefal_api import naming, v1alpha1
from kubefal_controlplane import deploy, deploy_spec, errors

DOCKERFILE = "FROM python:3.11-slim\nARG GREETING\nRUN echo $GREETING > /g\n"


def _container(**image: Any) -> isolate_proto.EnvironmentDefinition:
    struct = struct_pb2.Struct()
    struct.update(
        {
            "requirements": ["fastapi==0.1", "uvicorn"],
            "image": {"dockerfile_str": DOCKERFILE, "docker_files_list": [], **image},
        }
    )
    return isolate_proto.EnvironmentDefinition(kind="container", configuration=struct)


def _request(environment: isolate_proto.EnvironmentDefinition) -> Any:
    return isolate_proto.RegisterApplicationRequest(
        application_name="greeter", environments=[environment]
    )


def test_the_container_environment_becomes_spec_container_image() -> None:
    environment = _container(build_args={"GREETING": "hi"}, secrets={"TOKEN": "s3cr3t"})
    spec = deploy_spec.falapp_spec(
        _request(environment),
        class_name="Greeter",
        existing=None,
        secrets_name="kubefal-secrets",
        config_map="greeter-src",
    )
    assert spec["containerImage"] == {"dockerfile": DOCKERFILE, "buildArgs": {"GREETING": "hi"}}
    assert "s3cr3t" not in repr(spec)
    assert spec["requirements"] == []
    v1alpha1.FalAppSpec.model_validate(spec)
    image = deploy.container_image([environment])
    assert image is not None and image.secrets == {"TOKEN": "s3cr3t"}
    assert naming.build_secret_name("greeter") == "greeter-build-secrets"


def test_an_app_without_a_container_has_no_image_to_build() -> None:
    struct = struct_pb2.Struct()
    struct.update({"requirements": ["numpy"]})
    plain = isolate_proto.EnvironmentDefinition(kind="virtualenv", configuration=struct)
    assert deploy.container_image([plain]) is None


@pytest.mark.parametrize(
    ("image", "code", "field"),
    [
        ({"docker_files_list": ["app/"]}, grpc.StatusCode.FAILED_PRECONDITION, "image"),
        ({"dockerfile_str": " "}, grpc.StatusCode.INVALID_ARGUMENT, "image.dockerfile_str"),
        ({"build_args": {"1BAD": "x"}}, grpc.StatusCode.INVALID_ARGUMENT, "image.build_args"),
        ({"build_args": {"A": 1}}, grpc.StatusCode.INVALID_ARGUMENT, "image.build_args"),
        ({"secrets": {"a,b": "x"}}, grpc.StatusCode.INVALID_ARGUMENT, "image.secrets"),
    ],
)
def test_what_cannot_be_built_is_refused_naming_the_field(
    image: dict[str, Any], code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(errors.RpcFailure) as raised:
        deploy.container_image([_container(**image)])
    assert raised.value.code is code
    assert raised.value.message.startswith(f"environments[0].{field}"), raised.value.message
