"""`kubefal deploy`/`render` of a fal.ContainerImage app: spec.containerImage, and the build
secrets in a Secret of their own (never in the FalApp)."""

from __future__ import annotations

import pathlib

import pytest

from kubefal_api import v1alpha1
from kubefal_cli import appref, errors, manifests

APP = """
import fal
from fal.container import ContainerImage

class Greeter(
    fal.App,
    kind="container",
    image=ContainerImage.from_dockerfile_str(
        DOCKERFILE, build_args={"GREETING": "hi"}, secrets={"TOKEN": "s3cr3t"}
    ),
):
    app_name = "greeter"

    @fal.endpoint("/")
    def greet(self) -> dict[str, str]:
        return {}
"""


def _config(tmp_path: pathlib.Path, dockerfile: str) -> appref.AppConfig:
    path = tmp_path / "app.py"
    path.write_text(f"DOCKERFILE = {dockerfile!r}\n" + APP)
    return appref.read_config(appref.parse_ref(f"{path}::Greeter"))


def test_a_container_image_app_becomes_spec_container_image(tmp_path: pathlib.Path) -> None:
    dockerfile = "FROM python:3.11-slim\nARG GREETING\nRUN echo $GREETING > /g\n"
    config = _config(tmp_path, dockerfile)
    target = manifests.Target(namespace="team-a", name="greeter")
    objects = manifests.manifests(config, target=target)
    falapp = objects[-1]
    assert falapp["spec"]["containerImage"] == {
        "dockerfile": dockerfile,
        "buildArgs": {"GREETING": "hi"},
        "secretRef": {"name": "greeter-build-secrets"},
    }
    assert "s3cr3t" not in repr(falapp)  # the value goes into a Secret, not the FalApp
    # The app file still travels as source: the image is its environment.
    assert falapp["spec"]["source"] == {"configMapRef": {"name": "greeter-source"}}
    v1alpha1.FalAppSpec.model_validate(falapp["spec"])
    secret = manifests.build_secret_manifest(config, target=target, owner_uid="uid-1")
    assert secret is not None
    assert secret["stringData"] == {"TOKEN": "s3cr3t"}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_a_prebuilt_image_wins_and_needs_no_build(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, "FROM python:3.11-slim\n")
    target = manifests.Target(namespace="team-a", name="greeter", image="registry.example/g:1")
    spec = manifests.manifests(config, target=target)[-1]["spec"]
    assert spec["image"] == "registry.example/g:1" and "containerImage" not in spec
    assert manifests.build_secret_manifest(config, target=target, owner_uid=None) is None


def test_copy_from_the_build_context_is_refused_with_what_to_do(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, "FROM python:3.11-slim\nCOPY requirements.txt /r.txt\n")
    target = manifests.Target(namespace="team-a", name="greeter")
    with pytest.raises(errors.CliError, match=r"requirements\.txt"):
        manifests.manifests(config, target=target)


def test_render_prints_the_container_image_so_that_it_applies_as_is(
    tmp_path: pathlib.Path,
) -> None:
    import yaml

    from kubefal_cli import rendering

    dockerfile = 'FROM python:3.11-slim\nARG GREETING\nRUN echo "$GREETING: \\\\ # x" > /g\n'
    config = _config(tmp_path, dockerfile)
    target = manifests.Target(namespace="team-a", name="greeter")
    objects = manifests.manifests(config, target=target)
    text = rendering.render(config=config, objects=objects, command="kubefal render")
    assert "fal: image=fal.ContainerImage" in text
    parsed = [item for item in yaml.safe_load_all(text) if item]
    assert parsed[-1]["spec"]["containerImage"] == objects[-1]["spec"]["containerImage"]
