"""spec.containerImage (fal.ContainerImage): the model and the CRD refuse what cannot be built."""

from __future__ import annotations

import pydantic
import pytest

from kubefal_api import v1alpha1


def _spec(**fields: object) -> v1alpha1.FalAppSpec:
    return v1alpha1.FalAppSpec.model_validate({"app": "app.py::App", **fields})


def test_a_container_image_round_trips_with_kubernetes_names() -> None:
    spec = _spec(
        containerImage={
            "dockerfile": "FROM python:3.11-slim\n",
            "buildArgs": {"GREETING": "hi"},
            "secretRef": {"name": "build-secrets"},
        }
    )
    assert spec.container_image is not None
    assert spec.container_image.build_args == {"GREETING": "hi"}
    assert spec.to_kube()["containerImage"] == {
        "dockerfile": "FROM python:3.11-slim\n",
        "buildArgs": {"GREETING": "hi"},
        "secretRef": {"name": "build-secrets"},
    }


def test_image_and_container_image_are_exclusive() -> None:
    with pytest.raises(pydantic.ValidationError, match="mutually exclusive"):
        _spec(image="registry/app:1", containerImage={"dockerfile": "FROM x\n"})


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "", "A=B"])
def test_build_arg_names_must_be_arg_names(name: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="not ARG names"):
        _spec(containerImage={"dockerfile": "FROM x\n", "buildArgs": {name: "v"}})


def test_an_empty_dockerfile_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        _spec(containerImage={"dockerfile": ""})


def test_the_crd_carries_the_same_rules() -> None:
    from kubefal_api import crds

    schema = crds.falapp_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    rules = [rule["rule"] for rule in spec["x-kubernetes-validations"]]
    assert "!has(self.image) || !has(self.containerImage)" in rules
    image = spec["properties"]["containerImage"]
    assert image["required"] == ["dockerfile"]
    assert image["properties"]["buildArgs"]["maxProperties"] == v1alpha1.MAX_BUILD_ARGS
    assert schema["properties"]["status"]["properties"]["build"]["properties"]["phase"]["enum"]
