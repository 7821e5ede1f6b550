"""Builds of spec.containerImage: the Dockerfile with the runner stage, the content hash (the
image tag), the Job, its outcome, and the settings (pure logic; the e2e test builds for real,
e2e/test_container_image_build.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pydantic
import pytest

from kubefal_api import naming, v1alpha1
from kubefal_operator import build
from kubefal_operator import config as operator_config

SETTINGS = build.BuildSettings(registry="127.0.0.1:5000/apps", insecure_registry=True)


def _app(**image: Any) -> v1alpha1.FalApp:
    return v1alpha1.FalApp.from_kube(
        {
            "apiVersion": v1alpha1.API_VERSION,
            "kind": v1alpha1.KIND,
            "metadata": {"name": "greeter", "namespace": "team-a", "uid": "u-1", "generation": 3},
            "spec": {
                "app": "app.py::Greeter",
                "containerImage": {"dockerfile": "FROM python:3.11-slim\nRUN true\n", **image},
            },
        }
    )


def _spec(app: v1alpha1.FalApp) -> v1alpha1.ContainerImageSpec:
    assert app.spec.container_image is not None
    return app.spec.container_image


def test_the_runner_stage_follows_the_users_dockerfile_and_runs_as_the_runner_user() -> None:
    text = build.dockerfile(_spec(_app()), settings=SETTINGS)
    assert text.startswith("FROM python:3.11-slim\nRUN true\n")
    tail = text.split("added by kubefal", 1)[1]
    assert "COPY .kubefal-runner /opt/kubefal-runner/site-packages" in tail
    assert 'ENTRYPOINT ["python", "-m", "kubefal_runner"]' in tail
    assert "USER 10001:10001" in tail
    # The setup step is exec form (no shell needed in the image) and valid JSON.
    (run_line,) = [line for line in tail.splitlines() if line.startswith("RUN ")]
    argv = json.loads(run_line[4:])
    assert argv[:2] == ["python3", "-c"]
    compile(argv[2], "<runner setup>", "exec")
    assert "sys.version_info[:2] != (3, 11)" in argv[2]


def test_the_hash_changes_with_every_input_and_only_with_them() -> None:
    base = build.content_hash(_spec(_app()), settings=SETTINGS)
    assert base == build.content_hash(_spec(_app()), settings=SETTINGS)
    assert len(base) == build.HASH_LENGTH
    variants = [
        build.content_hash(_spec(_app(buildArgs={"A": "1"})), settings=SETTINGS),
        build.content_hash(_spec(_app(buildArgs={"A": "2"})), settings=SETTINGS),
        build.content_hash(_spec(_app(dockerfile="FROM python:3.11\n")), settings=SETTINGS),
        build.content_hash(
            _spec(_app()),
            settings=build.BuildSettings(registry="r", builder_image="other/builder:2"),
        ),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    # Build secrets are not content: another Secret (another app's name) is the same image.
    assert build.content_hash(_spec(_app(secretRef={"name": "s"})), settings=SETTINGS) == base


def test_the_image_is_tagged_by_the_hash_in_a_repository_of_the_namespace() -> None:
    digest = build.content_hash(_spec(_app()), settings=SETTINGS)
    reference = build.image_reference("team-a", digest, settings=SETTINGS)
    assert reference == f"127.0.0.1:5000/apps/team-a:{digest}"
    assert build.manifest_url(reference, insecure=True) == (
        f"http://127.0.0.1:5000/v2/apps/team-a/manifests/{digest}"
    )
    assert build.manifest_url("registry.example/x:t", insecure=False) == (
        "https://registry.example/v2/x/manifests/t"
    )


def test_the_job_builds_with_args_secrets_and_overrides_and_is_no_runner() -> None:
    settings = build.BuildSettings(
        registry="127.0.0.1:5000/apps",
        insecure_registry=True,
        push_secret="push",
        pod_overrides=build.pod_overrides(json.dumps({"hostNetwork": True})),
    )
    app = _app(buildArgs={"B": "2", "A": "x y"}, secretRef={"name": "build-secrets"})
    digest = build.content_hash(_spec(app), settings=settings)
    reference = build.image_reference("team-a", digest, settings=settings)
    job = build.job(app, digest=digest, settings=settings, reference=reference)
    assert job["metadata"]["name"] == f"greeter-build-{digest[:10]}"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert naming.LABEL_APP not in labels and naming.LABEL_APP not in job["metadata"]["labels"]
    assert labels[build.LABEL_BUILD_OF] == "greeter"
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    # Arguments are an argv, never a shell line: a value with spaces stays one argument.
    assert container["args"] == [reference, "false", "--build-arg", "A=x y", "--build-arg", "B=2"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["KUBEFAL_DOCKERFILE"] == build.dockerfile(_spec(app), settings=settings)
    assert env["REGISTRY_AUTH_FILE"] == "/kubefal/auth/auth.json"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "build-secrets"
    assert volumes["auth"]["secret"]["secretName"] == "push"


def test_the_largest_build_the_manifest_allows_still_starts_its_process() -> None:
    """Regression: the Dockerfile reaches the build process in one environment variable and
    each build argument as one argv string; Linux refuses to start a process with one over
    128 KiB (a 256 KiB Dockerfile used to be accepted, then failed the build pod). The
    largest spec the model accepts, in 4-byte characters, is really exec'd here."""
    wide = "\U0001f600"
    header = "FROM python:3.11-slim\n#"
    dockerfile = header + wide * ((v1alpha1.MAX_DOCKERFILE_BYTES - len(header)) // 4)
    name = "A" * (v1alpha1.MAX_BUILD_ARG_NAME_LENGTH - 2)
    build_args = {
        f"{name}{n:02d}": wide * v1alpha1.MAX_BUILD_ARG_VALUE_LENGTH
        for n in range(v1alpha1.MAX_BUILD_ARGS)
    }
    app = _app(dockerfile=dockerfile, buildArgs=build_args)
    digest = build.content_hash(_spec(app), settings=SETTINGS)
    reference = build.image_reference("team-a", digest, settings=SETTINGS)
    (container,) = build.job(app, digest=digest, settings=SETTINGS, reference=reference)["spec"][
        "template"
    ]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    finished = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; print(len(sys.argv), len(os.environ[sys.argv[1]]))",
            "KUBEFAL_DOCKERFILE",
            *container["args"],
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert finished.stdout.split() == [
        str(2 + len(container["args"])),
        str(len(env["KUBEFAL_DOCKERFILE"])),
    ]


@pytest.mark.parametrize(
    ("field", "image"),
    [
        ("dockerfile", {"dockerfile": "FROM x\n#" + "é" * (v1alpha1.MAX_DOCKERFILE_BYTES // 2)}),
        ("buildArgs", {"buildArgs": {"A" * (v1alpha1.MAX_BUILD_ARG_NAME_LENGTH + 1): "v"}}),
        ("buildArgs", {"buildArgs": {"A": "v" * (v1alpha1.MAX_BUILD_ARG_VALUE_LENGTH + 1)}}),
    ],
)
def test_a_build_too_large_to_start_is_refused_naming_the_field(
    field: str, image: dict[str, Any]
) -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        _app(**image)
    assert [error["loc"][-1] for error in raised.value.errors()] == [field]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"nodeSelector": "pool=build"}, "nodeSelector must be a JSON object"),
        ({"tolerations": {"key": "build"}}, "tolerations must be a JSON array"),
        ({"hostNetwork": "true"}, "hostNetwork must be a JSON boolean"),
        ({"serviceAccountName": 7}, "serviceAccountName must be a JSON string"),
    ],
)
def test_pod_overrides_of_the_wrong_json_type_are_refused_at_start_naming_the_key(
    overrides: dict[str, Any], key: str
) -> None:
    """Regression: they used to be accepted, and every build Job was then refused by the API
    server."""
    with pytest.raises(operator_config.ConfigError, match=key):
        operator_config.OperatorConfig.from_environment(
            {"KUBEFAL_BUILD_POD_OVERRIDES": json.dumps(overrides)}
        )


@pytest.mark.parametrize(
    ("conditions", "outcome"),
    [
        ([], None),
        ([{"type": "Complete", "status": "True"}], True),
        ([{"type": "Failed", "status": "True", "message": "DeadlineExceeded"}], False),
        ([{"type": "Failed", "status": "False"}], None),
    ],
)
def test_job_outcome(conditions: list[dict[str, str]], outcome: bool | None) -> None:
    assert build.job_outcome({"status": {"conditions": conditions}})[0] is outcome


def test_settings_come_from_the_environment_and_bad_values_are_refused() -> None:
    config = operator_config.OperatorConfig.from_environment(
        {
            "KUBEFAL_BUILD_REGISTRY": "127.0.0.1:5000/apps/",
            "KUBEFAL_BUILD_REGISTRY_INSECURE": "true",
            "KUBEFAL_BUILDER_IMAGE": "registry.example/kubefal-builder:1",
            "KUBEFAL_BUILD_POD_OVERRIDES": '{"nodeSelector": {"pool": "build"}}',
            "KUBEFAL_BUILD_TIMEOUT": "600",
        }
    )
    assert config.build.registry == "127.0.0.1:5000/apps"
    assert config.build.insecure_registry is True
    assert config.build.builder_image == "registry.example/kubefal-builder:1"
    assert config.build.timeout_seconds == 600
    assert operator_config.OperatorConfig.from_environment({}).build.registry is None
    for name, value in [
        ("KUBEFAL_BUILD_REGISTRY", "https://registry.example"),
        ("KUBEFAL_BUILD_REGISTRY", "Registry.Example/UPPER"),
        ("KUBEFAL_BUILD_POD_OVERRIDES", '{"containers": []}'),
        ("KUBEFAL_BUILD_POD_OVERRIDES", "not json"),
        ("KUBEFAL_BUILD_TIMEOUT", "0"),
        ("KUBEFAL_BUILD_REGISTRY_INSECURE", "maybe"),
    ]:
        with pytest.raises(operator_config.ConfigError, match=name):
            operator_config.OperatorConfig.from_environment({name: value})
