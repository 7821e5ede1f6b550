"""`kubefal render` and `kubefal deploy --dry-run`: the same objects, from the class's config."""

from __future__ import annotations

import pathlib
from typing import Any

import click.testing
import hypothesis
import hypothesis.strategies as st
import pytest
import yaml

from kubefal_api import bundles, v1alpha1
from kubefal_cli import appref, errors, main, manifests, rendering


def _invoke(runner: click.testing.CliRunner, *args: str) -> str:
    result = runner.invoke(main.cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def _documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document is not None]


def test_rendered_yaml_parses_to_exactly_what_deploy_dry_run_applies(
    cli_runner: click.testing.CliRunner, apps_dir: pathlib.Path
) -> None:
    app = str(apps_dir / "gpu_app.py::GpuImageApp")

    rendered = _invoke(cli_runner, "render", app, "-n", "team-a")
    dry_run = _invoke(cli_runner, "deploy", app, "-n", "team-a", "--dry-run")

    assert _documents(rendered) == _documents(dry_run)
    assert [document["kind"] for document in _documents(rendered)] == ["ConfigMap", "FalApp"]


def test_rendered_falapp_carries_every_attribute_of_the_class(
    cli_runner: click.testing.CliRunner, apps_dir: pathlib.Path
) -> None:
    rendered = _invoke(cli_runner, "render", str(apps_dir / "gpu_app.py"), "-n", "team-a")

    falapp = _documents(rendered)[-1]

    assert falapp["metadata"] == {
        "name": "gpu-image",
        "namespace": "team-a",
        "labels": {"app.kubernetes.io/managed-by": "kubefal"},
    }
    assert falapp["spec"] == {
        "app": "gpu_app.py::GpuImageApp",
        "source": {"configMapRef": {"name": "gpu-image-source"}},
        "requirements": ["torch==2.5.1", "diffusers>=0.30"],
        "machineTypes": ["GPU-H100", "GPU-A100"],
        "numGpus": 2,
        "regions": ["us-east", "eu-west"],
        "auth": "public",
        "scaling": {
            "minConcurrency": 1,
            "maxConcurrency": 6,
            "keepAlive": 900,
            "concurrencyBuffer": 1,
            "concurrencyBufferPerc": 20,
            "scalingDelay": 5,
            "maxMultiplexing": 3,
            "policy": "countStarting",
        },
        "requestTimeout": 900,
        "startupTimeout": 1200,
        "healthCheck": {
            "path": "/healthy",
            "method": "POST",
            "startPeriodSeconds": 45,
            "timeoutSeconds": 7,
            "failureThreshold": 4,
            "callRegularly": True,
        },
        "strategy": "rolling",
        "skipRetryConditions": ["timeout"],
        "scaler": "builtin",
        "persistentData": True,
    }
    assert v1alpha1.FalApp.model_validate(falapp).spec.gpus_per_runner == 2


def test_rendered_config_map_holds_the_app_files_byte_for_byte(
    cli_runner: click.testing.CliRunner, apps_dir: pathlib.Path
) -> None:
    rendered = _invoke(cli_runner, "render", str(apps_dir / "echo_app.py::CliEchoApp"))

    config_map = _documents(rendered)[0]

    assert config_map["metadata"]["name"] == "cli-echo-app-source"
    assert config_map["data"]["echo_app.py"] == (apps_dir / "echo_app.py").read_text()
    assert config_map["data"]["gpu_app.py"] == (apps_dir / "gpu_app.py").read_text()


def test_every_rendered_spec_field_is_explained_with_its_fal_attribute(
    cli_runner: click.testing.CliRunner, apps_dir: pathlib.Path
) -> None:
    rendered = _invoke(cli_runner, "render", str(apps_dir / "gpu_app.py"))
    lines = rendered.splitlines()
    spec_start = lines.index("spec:")
    top_level_fields = [
        (number, line)
        for number, line in enumerate(lines[spec_start + 1 :], start=spec_start + 1)
        if line.startswith("  ") and not line.startswith("   ") and not line.startswith("  #")
    ]

    assert len(top_level_fields) == len(_documents(rendered)[-1]["spec"])
    for number, line in top_level_fields:
        assert lines[number - 1].lstrip().startswith("#"), f"no comment above {line!r}"
    text = "\n".join(lines)
    for attribute in (
        "machine_type",
        "num_gpus",
        "regions",
        "app_auth",
        "requirements",
        "min_concurrency",
        "max_concurrency",
        "keep_alive",
        "concurrency_buffer",
        "concurrency_buffer_perc",
        "scaling_delay",
        "max_multiplexing",
        "request_timeout",
        "startup_timeout",
        "skip_retry_conditions",
    ):
        assert f"(fal: {attribute}" in text, attribute
    assert "(kubefal: the class attribute kubefal_scaling_policy)" in text


def test_image_deploys_render_without_a_config_map(
    cli_runner: click.testing.CliRunner, apps_dir: pathlib.Path
) -> None:
    rendered = _invoke(
        cli_runner,
        "render",
        str(apps_dir / "echo_app.py"),
        "--image",
        "registry.example/echo:1",
        "--name",
        "echo",
        "--strategy",
        "recreate",
    )

    [falapp] = _documents(rendered)
    assert falapp["metadata"]["name"] == "echo"
    assert falapp["spec"]["image"] == "registry.example/echo:1"
    assert falapp["spec"]["strategy"] == "recreate"
    assert "source" not in falapp["spec"]


def test_unset_fal_attributes_take_the_crd_defaults(apps_dir: pathlib.Path) -> None:
    config = appref.read_config(appref.parse_ref(str(apps_dir / "echo_app.py::CliEchoApp")))

    falapp = manifests.falapp_manifest(config, target=manifests.Target(namespace="ns", name="echo"))

    assert falapp["spec"]["auth"] == "private"
    assert falapp["spec"]["startupTimeout"] == v1alpha1.DEFAULT_STARTUP_TIMEOUT_SECONDS
    assert falapp["spec"]["scaling"]["scalingDelay"] == v1alpha1.DEFAULT_SCALING_DELAY_SECONDS
    assert "healthCheck" not in falapp["spec"]
    assert "regions" not in falapp["spec"]
    assert falapp["spec"]["scaling"]["policy"] == v1alpha1.ScalingPolicy.FAL


def test_a_scaling_policy_the_falapp_does_not_know_is_refused_naming_the_attribute(
    apps_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    source = (apps_dir / "gpu_app.py").read_text()
    app = tmp_path / "gpu_app.py"
    app.write_text(
        source.replace(
            'kubefal_scaling_policy = "countStarting"', 'kubefal_scaling_policy = "eager"'
        )
    )

    with pytest.raises(
        errors.CliError, match="kubefal_scaling_policy must be one of fal, countStarting"
    ):
        appref.read_config(appref.parse_ref(str(app)))


@hypothesis.given(text=st.text(max_size=300))
@hypothesis.settings(max_examples=400, deadline=None)
def test_any_file_text_round_trips_through_the_rendered_yaml(text: str) -> None:
    document = f"data:\n  file.py: {rendering.yaml_text_block(text, indent=4)}\n"

    assert yaml.safe_load(document) == {"data": {"file.py": text}}


@hypothesis.given(
    value=st.one_of(
        st.text(max_size=40),
        st.integers(),
        st.booleans(),
        st.lists(st.text(max_size=10), max_size=4),
    )
)
@hypothesis.settings(max_examples=400, deadline=None)
def test_any_scalar_round_trips_through_the_yaml_filter(value: object) -> None:
    assert yaml.safe_load(f"key: {rendering.yaml_scalar(value)}\n") == {"key": value}


def test_requirement_layers_render_as_layers_with_their_comment(
    cli_runner: click.testing.CliRunner, apps_dir: pathlib.Path
) -> None:
    app = str(apps_dir / "layered_app.py::CliLayeredApp")

    rendered = _invoke(cli_runner, "render", app, "-n", "team-a")
    dry_run = _invoke(cli_runner, "deploy", app, "-n", "team-a", "--dry-run")

    spec = _documents(rendered)[-1]["spec"]
    assert spec["requirementLayers"] == [
        ["kubefal-probe-package==1.0"],
        ["kubefal-probe-extra==1.0"],
    ]
    assert "requirements" not in spec
    assert _documents(rendered) == _documents(dry_run)
    assert "(fal: requirements as a list of lists)" in rendered


BUNDLED = "bundled/project/app/bundled_app.py::BundledApp"


@pytest.fixture
def bundled_app(apps_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The bundled app, with its local package importable (as `fal deploy` needs it too)."""
    monkeypatch.syspath_prepend(str(apps_dir / "bundled"))
    return str(apps_dir / BUNDLED)


def test_app_files_and_local_packages_render_as_a_projected_bundle(
    cli_runner: click.testing.CliRunner, apps_dir: pathlib.Path, bundled_app: str
) -> None:
    result = cli_runner.invoke(main.cli, ["render", bundled_app, "-n", "team-a"])
    assert result.exit_code == 0, result.output
    dry_run = _invoke(cli_runner, "deploy", bundled_app, "-n", "team-a", "--dry-run")

    documents = _documents(result.stdout)
    falapp = documents[-1]
    files = bundles.unpack(documents[:-1], falapp["spec"]["source"])
    project = apps_dir / "bundled" / "project"
    package = apps_dir / "bundled" / "localpkg"
    assert falapp["spec"]["app"] == "app/bundled_app.py::BundledApp"
    assert files == {
        "app/bundled_app.py": (project / "app" / "bundled_app.py").read_bytes(),
        "app/helpers/__init__.py": (project / "app" / "helpers" / "__init__.py").read_bytes(),
        "assets/notes.txt": b"notes for the app\n",
        "assets/blob.bin": b"\x00\x01\x02\xff\xfe",
        "localpkg/__init__.py": (package / "__init__.py").read_bytes(),
        "localpkg/sub/__init__.py": b"",
        "localpkg/sub/inner.py": (package / "sub" / "inner.py").read_bytes(),
    }
    assert {document["kind"] for document in documents[:-1]} == {"ConfigMap"}
    assert _documents(dry_run) == documents
    # What is left out is said, not dropped silently; what app_files_ignore drops is not shipped.
    assert "Left out: missing.txt: app_files entry not found" in result.stderr
    assert "ignored.skip" not in "".join(files)


def test_a_bundle_larger_than_a_config_map_spreads_over_several(tmp_path: pathlib.Path) -> None:
    files = {f"weights/part{index}.txt": b"x" * 400_000 for index in range(5)}
    files["big.bin"] = bytes(range(256)) * 2000

    bundle = bundles.pack(files, namespace="team-a", app_name="demo")

    assert len(bundle.config_maps) >= 3
    assert bundles.unpack(bundle.config_maps, bundle.source) == files
    for config_map in bundle.config_maps:
        stored = sum(len(v) for v in (config_map.get("data") or {}).values()) + sum(
            len(v) for v in (config_map.get("binaryData") or {}).values()
        )
        assert stored <= bundles.MAX_CONFIG_MAP_PAYLOAD
    v1alpha1.SourceSpec.model_validate(bundle.source)


def test_what_no_config_map_can_carry_is_refused_with_what_to_do() -> None:
    with pytest.raises(bundles.BundleError, match=r"model\.bin.*/data \(persistentData"):
        bundles.pack(
            {"model.bin": b"\xff" * (bundles.MAX_FILE_BYTES + 1)}, namespace="a", app_name="b"
        )
    with pytest.raises(bundles.BundleError, match=r"\.\./escape"):
        bundles.pack({"../escape": b""}, namespace="a", app_name="b")
