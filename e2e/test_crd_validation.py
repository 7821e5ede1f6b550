"""The real API server enforces the FalApp CRD: bad manifests never get stored.

The CRD under test is the committed ``crds/`` file, installed the way users install it (server
side apply of the same YAML). Every invalid manifest of the corpus is POSTed for real: the API
server must answer 422 (or 400 for an unknown field) with the offending field in the error, and
nothing may be stored, so the operator never sees it. Valid manifests come back with the
defaults of the models applied by the API server itself. A property test (hypothesis) drives
generated specs through both the API server (dry run) and the pydantic models: they must accept
and reject the same specs and default them the same way.
"""

from __future__ import annotations

import copy
import datetime
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any, Final

import hypothesis
import hypothesis.strategies as st
import pydantic
import pytest
import yaml
from kubernetes import client as k8s

from e2e import operator_harness
from e2e.conftest import ClusterHandle
from kubefal_api import conditions, v1alpha1
from testkit import waiting

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def validation_namespace(api_client: k8s.ApiClient) -> Iterator[str]:
    """One namespace for the whole corpus: rejected objects leave nothing behind in it."""
    yield from operator_harness.fresh_namespace(api_client, prefix="e2e-crd-validation-")


@pytest.fixture(scope="module")
def objects(api_client: k8s.ApiClient, falapp_crd: dict[str, Any]) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api_client)


def falapp(name: str = "demo", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": name},
        "spec": {"app": "app.py::MyApp", **spec},
    }


def without(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with the dotted ``path`` removed."""
    result = copy.deepcopy(body)
    *parents, leaf = path.split(".")
    node = result
    for parent in parents:
        node = node[parent]
    del node[leaf]
    return result


def create(objects: k8s.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    created = objects.create_namespaced_custom_object(
        v1alpha1.GROUP,
        v1alpha1.VERSION,
        namespace,
        v1alpha1.PLURAL,
        body,
        field_validation="Strict",
    )
    assert isinstance(created, dict)
    return created


def set_status(
    objects: k8s.CustomObjectsApi,
    namespace: str,
    name: str,
    status: dict[str, Any],
    *,
    subresource_status: bool,
) -> dict[str, Any]:
    """Replace ``.status`` with a JSON patch, through the status subresource or the main
    resource. A JSON patch replaces the whole status, whatever an operator running against the
    same cluster wrote there."""
    body = [{"op": "add", "path": "/status", "value": status}]
    arguments = (v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name, body)
    content_type = "application/json-patch+json"
    if subresource_status:
        patched = objects.patch_namespaced_custom_object_status(
            *arguments, _content_type=content_type
        )
    else:
        patched = objects.patch_namespaced_custom_object(*arguments, _content_type=content_type)
    assert isinstance(patched, dict)
    return patched


# (id, manifest, field the API server must name). Each breaks exactly one rule.
INVALID_MANIFESTS: list[tuple[str, dict[str, Any], str]] = [
    ("spec-missing", without("spec", falapp()), "spec"),
    ("app-missing", without("spec.app", falapp()), "spec.app"),
    ("app-without-class", falapp(app="app.py"), "spec.app"),
    ("app-with-space", falapp(app="my app.py::MyApp"), "spec.app"),
    ("machine-types-empty", falapp(machineTypes=[]), "spec.machineTypes"),
    ("machine-types-duplicate", falapp(machineTypes=["S", "S"]), "spec.machineTypes"),
    ("machine-type-malformed", falapp(machineTypes=["GPU H100"]), "spec.machineTypes[0]"),
    (
        "machine-types-too-many",
        falapp(machineTypes=[f"GPU-T{n}" for n in range(9)]),
        "spec.machineTypes",
    ),
    ("num-gpus-on-cpu-type", falapp(numGpus=1), "spec.numGpus"),
    (
        "num-gpus-on-mixed-types",
        falapp(machineTypes=["GPU-H100", "L"], numGpus=2),
        "spec.numGpus",
    ),
    ("num-gpus-zero", falapp(machineTypes=["GPU-H100"], numGpus=0), "spec.numGpus"),
    ("num-gpus-nine", falapp(machineTypes=["GPU-H100"], numGpus=9), "spec.numGpus"),
    ("num-gpus-string", falapp(machineTypes=["GPU-H100"], numGpus="two"), "spec.numGpus"),
    (
        "min-above-max",
        falapp(scaling={"minConcurrency": 5, "maxConcurrency": 2}),
        "spec.scaling.minConcurrency",
    ),
    (
        "min-above-default-max",
        falapp(scaling={"minConcurrency": v1alpha1.DEFAULT_MAX_CONCURRENCY + 1}),
        "spec.scaling.minConcurrency",
    ),
    ("min-negative", falapp(scaling={"minConcurrency": -1}), "spec.scaling.minConcurrency"),
    ("max-zero", falapp(scaling={"maxConcurrency": 0}), "spec.scaling.maxConcurrency"),
    (
        "buffer-perc-above-100",
        falapp(scaling={"concurrencyBufferPerc": 101}),
        "spec.scaling.concurrencyBufferPerc",
    ),
    (
        "buffer-negative",
        falapp(scaling={"concurrencyBuffer": -1}),
        "spec.scaling.concurrencyBuffer",
    ),
    (
        "multiplexing-zero",
        falapp(scaling={"maxMultiplexing": 0}),
        "spec.scaling.maxMultiplexing",
    ),
    ("keep-alive-negative", falapp(scaling={"keepAlive": -1}), "spec.scaling.keepAlive"),
    (
        "scaling-delay-negative",
        falapp(scaling={"scalingDelay": -5}),
        "spec.scaling.scalingDelay",
    ),
    ("request-timeout-zero", falapp(requestTimeout=0), "spec.requestTimeout"),
    ("startup-timeout-negative", falapp(startupTimeout=-10), "spec.startupTimeout"),
    ("auth-unknown", falapp(auth="everyone"), "spec.auth"),
    ("strategy-unknown", falapp(strategy="bluegreen"), "spec.strategy"),
    ("scaler-unknown", falapp(scaler="custom"), "spec.scaler"),
    ("hpa-scaling-to-zero", falapp(scaler="hpa"), "spec.scaling.minConcurrency"),
    (
        "skip-retry-unknown",
        falapp(skipRetryConditions=["always"]),
        "spec.skipRetryConditions[0]",
    ),
    (
        "skip-retry-duplicate",
        falapp(skipRetryConditions=["timeout", "timeout"]),
        "spec.skipRetryConditions[1]",
    ),
    ("regions-duplicate", falapp(regions=["us-east", "us-east"]), "spec.regions[1]"),
    ("health-check-without-path", falapp(healthCheck={}), "spec.healthCheck.path"),
    (
        "health-check-relative-path",
        falapp(healthCheck={"path": "healthz"}),
        "spec.healthCheck.path",
    ),
    (
        "health-check-timeout-zero",
        falapp(healthCheck={"path": "/healthz", "timeoutSeconds": 0}),
        "spec.healthCheck.timeoutSeconds",
    ),
    (
        "health-check-method-put",
        falapp(healthCheck={"path": "/healthz", "method": "PUT"}),
        "spec.healthCheck.method",
    ),
    (
        "env-duplicate-name",
        falapp(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
        "spec.env[1]",
    ),
    (
        "env-value-and-value-from",
        falapp(env=[{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s"}}}]),
        "spec.env[0].valueFrom",
    ),
    ("env-from-without-source", falapp(envFrom=[{"prefix": "HF_"}]), "spec.envFrom[0]"),
    ("source-without-config-map", falapp(source={}), "spec.source.configMapRef"),
    (
        "source-both-forms",
        falapp(
            source={
                "configMapRef": {"name": "a"},
                "configMaps": [{"name": "b", "items": [{"key": "k", "path": "x.py"}]}],
            }
        ),
        "spec.source.configMapRef",
    ),
    (
        "source-path-leaves-the-app-directory",
        falapp(source={"configMaps": [{"name": "b", "items": [{"key": "k", "path": "../x"}]}]}),
        "spec.source.configMaps[0].items[0].path",
    ),
    (
        "requirements-and-layers",
        falapp(requirements=["a"], requirementLayers=[["b"]]),
        "spec.requirementLayers",
    ),
    ("requirement-layer-empty", falapp(requirementLayers=[[]]), "spec.requirementLayers[0]"),
    (
        "requirement-is-a-pip-option",
        falapp(requirements=["numpy", "--index-url=https://elsewhere.invalid/simple"]),
        "spec.requirements[1]",
    ),
    (
        "layer-requirement-is-a-pip-option",
        falapp(requirementLayers=[["numpy"], ["-r", "/etc/passwd"]]),
        "spec.requirementLayers[1][0]",
    ),
    ("image-empty", falapp(image=""), "spec.image"),
    (
        "container-image-and-image",
        falapp(image="registry/app:1", containerImage={"dockerfile": "FROM x\n"}),
        "spec.containerImage",
    ),
    (
        "build-arg-name-not-an-arg-name",
        falapp(containerImage={"dockerfile": "FROM x\n", "buildArgs": {"A-B": "v"}}),
        "spec.containerImage.buildArgs",
    ),
    (
        "build-arg-name-too-long",
        falapp(
            containerImage={
                "dockerfile": "FROM x\n",
                "buildArgs": {"A" * (v1alpha1.MAX_BUILD_ARG_NAME_LENGTH + 1): "v"},
            }
        ),
        "spec.containerImage.buildArgs",
    ),
    (
        "build-arg-value-too-long",
        falapp(
            containerImage={
                "dockerfile": "FROM x\n",
                "buildArgs": {"A": "v" * (v1alpha1.MAX_BUILD_ARG_VALUE_LENGTH + 1)},
            }
        ),
        "spec.containerImage.buildArgs.A",
    ),
    (
        # Few enough characters for maxLength, too many UTF-8 bytes for the build's process.
        "dockerfile-too-many-bytes",
        falapp(
            containerImage={
                "dockerfile": "FROM x\n#" + "\u00e9" * (v1alpha1.MAX_DOCKERFILE_BYTES // 2)
            }
        ),
        "spec.containerImage.dockerfile",
    ),
    ("scaling-policy-unknown", falapp(scaling={"policy": "eager"}), "spec.scaling.policy"),
    ("unknown-field-fal-spelling", falapp(machineType="GPU-H100"), "spec.machineType"),
    ("name-not-dns-1035", falapp(name="1st-app"), "metadata.name"),
    ("name-too-long", falapp(name="a" * 64), "metadata.name"),
]


def error_details(error: k8s.ApiException) -> tuple[list[str], str]:
    """The fields named by a Status error, and its message."""
    status = json.loads(error.body or "{}")
    causes = (status.get("details") or {}).get("causes") or []
    return [cause.get("field", "") for cause in causes], str(status.get("message", ""))


def test_the_corpus_is_large_enough() -> None:
    assert len(INVALID_MANIFESTS) >= 25
    assert len({case_id for case_id, _, _ in INVALID_MANIFESTS}) == len(INVALID_MANIFESTS)


@pytest.mark.parametrize(
    ("manifest", "field"),
    [pytest.param(manifest, field, id=case_id) for case_id, manifest, field in INVALID_MANIFESTS],
)
def test_invalid_manifest_is_rejected_naming_the_field(
    objects: k8s.CustomObjectsApi,
    validation_namespace: str,
    manifest: dict[str, Any],
    field: str,
) -> None:
    with pytest.raises(k8s.ApiException) as raised:
        create(objects, validation_namespace, manifest)
    assert raised.value.status in {400, 422}, raised.value.body
    fields, message = error_details(raised.value)
    assert field in fields or f"{field}:" in message or f'"{field}"' in message, (
        f"expected the error to name {field!r}; fields={fields} message={message!r}"
    )
    # Nothing was stored, so nothing can reach the operator.
    stored = objects.list_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, validation_namespace, v1alpha1.PLURAL
    )
    assert isinstance(stored, dict)
    assert stored["items"] == []


@pytest.mark.parametrize(
    "manifest",
    [pytest.param(manifest, id=case_id) for case_id, manifest, _ in INVALID_MANIFESTS],
)
def test_the_models_reject_what_the_api_server_rejects(manifest: dict[str, Any]) -> None:
    # So `kubefal render` and the operator's parsing never disagree with the API server.
    with pytest.raises(pydantic.ValidationError):
        v1alpha1.FalApp.model_validate(manifest)


_TYPES: Final = ["S", "L", "GPU-H100", "GPU-H200", "GPU-B200"]

# Each field: (values on the valid side, values on the invalid side of its bounds or enum).
# Most drawn specs break at most one field, so the API server and the models are compared on
# valid specs and right across every boundary; cross-field rules (numGpus on CPU types,
# minConcurrency above maxConcurrency, hpa at zero) are broken by chance combinations.
_SPEC_FIELDS: Final[dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]] = {
    "machineTypes": (
        st.lists(st.sampled_from(_TYPES), min_size=1, max_size=3, unique=True),
        st.one_of(st.just([]), st.sampled_from(_TYPES).map(lambda name: [name, name])),
    ),
    "numGpus": (st.integers(min_value=1, max_value=8), st.sampled_from([0, 9, -1])),
    "auth": (st.sampled_from(["private", "shared", "public"]), st.just("internal")),
    "scaler": (st.sampled_from(["builtin", "keda", "hpa"]), st.just("custom")),
    "strategy": (st.sampled_from(["rolling", "recreate"]), st.just("canary")),
    "requestTimeout": (st.integers(min_value=1, max_value=86_400), st.sampled_from([0, -1])),
    "startupTimeout": (st.integers(min_value=1, max_value=86_400), st.just(0)),
    "skipRetryConditions": (
        st.lists(st.sampled_from(["timeout", "server_error", "connection_error"]), unique=True),
        st.just(["timeout", "timeout"]),
    ),
}
_SCALING_FIELDS: Final[dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]] = {
    "minConcurrency": (st.integers(min_value=0, max_value=4), st.just(-1)),
    "maxConcurrency": (st.integers(min_value=1, max_value=12), st.just(0)),
    "concurrencyBufferPerc": (st.integers(min_value=0, max_value=100), st.sampled_from([-1, 101])),
    "maxMultiplexing": (st.integers(min_value=1, max_value=8), st.just(0)),
    "keepAlive": (st.integers(min_value=0, max_value=3_600), st.just(-1)),
}


def _draw_fields(
    draw: st.DrawFn,
    fields: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]],
    broken: str | None,
) -> dict[str, Any]:
    drawn: dict[str, Any] = {}
    for name, (valid, invalid) in fields.items():
        if name == broken:
            drawn[name] = draw(invalid)
        elif draw(st.booleans()):
            drawn[name] = draw(valid)
    return drawn


@st.composite
def _specs(draw: st.DrawFn) -> dict[str, Any]:
    every_field = [*_SPEC_FIELDS, *(f"scaling.{name}" for name in _SCALING_FIELDS)]
    broken = draw(st.one_of(st.none(), st.sampled_from(every_field)))
    spec = _draw_fields(draw, _SPEC_FIELDS, broken)
    scaling_broken = broken.removeprefix("scaling.") if broken else None
    scaling = _draw_fields(draw, _SCALING_FIELDS, scaling_broken)
    empty_scaling: bool = draw(st.booleans())
    if scaling or empty_scaling:
        spec["scaling"] = scaling
    return {"app": "app.py::MyApp", **spec}


@hypothesis.settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
@hypothesis.given(spec=_specs())
def test_the_api_server_and_the_models_agree_on_every_spec(
    objects: k8s.CustomObjectsApi, validation_namespace: str, spec: dict[str, Any]
) -> None:
    manifest = {**falapp(), "spec": spec}
    try:
        model_spec: v1alpha1.FalAppSpec | None = v1alpha1.FalApp.model_validate(manifest).spec
    except pydantic.ValidationError:
        model_spec = None
    try:
        served = objects.create_namespaced_custom_object(
            v1alpha1.GROUP,
            v1alpha1.VERSION,
            validation_namespace,
            v1alpha1.PLURAL,
            manifest,
            dry_run="All",
            field_validation="Strict",
        )
    except k8s.ApiException as error:
        assert error.status == 422, error.body
        assert model_spec is None, f"the API server rejected what the models accept: {error.body}"
        hypothesis.event("rejected by both")
        return
    hypothesis.event("accepted by both")
    assert model_spec is not None, "the API server accepted what the models reject"
    assert v1alpha1.FalApp.from_kube(served).spec == model_spec


def test_cel_messages_name_the_fields_they_relate(
    objects: k8s.CustomObjectsApi, validation_namespace: str
) -> None:
    with pytest.raises(k8s.ApiException) as raised:
        create(
            objects,
            validation_namespace,
            falapp(scaling={"minConcurrency": 3, "maxConcurrency": 1}),
        )
    _, message = error_details(raised.value)
    assert "spec.scaling.minConcurrency must be <= spec.scaling.maxConcurrency" in message


def test_a_minimal_falapp_gets_the_sdk_defaults_from_the_api_server(
    objects: k8s.CustomObjectsApi, namespace: str
) -> None:
    created = create(objects, namespace, falapp())
    spec = created["spec"]
    assert spec["machineTypes"] == ["S"]
    assert spec["auth"] == "private"
    assert spec["strategy"] == "rolling"
    assert spec["scaler"] == "builtin"
    assert spec["requestTimeout"] == v1alpha1.DEFAULT_REQUEST_TIMEOUT_SECONDS
    assert spec["startupTimeout"] == v1alpha1.DEFAULT_STARTUP_TIMEOUT_SECONDS
    assert spec["scaling"] == {
        "minConcurrency": 0,
        "maxConcurrency": v1alpha1.DEFAULT_MAX_CONCURRENCY,
        "keepAlive": 60,
        "concurrencyBuffer": 0,
        "concurrencyBufferPerc": 0,
        "scalingDelay": 0,
        "maxMultiplexing": 1,
        "policy": v1alpha1.ScalingPolicy.FAL.value,
    }
    assert "numGpus" not in spec
    assert "healthCheck" not in spec
    # The server's defaults and the models' defaults are the same.
    assert v1alpha1.FalApp.from_kube(created).spec == v1alpha1.FalApp.model_validate(falapp()).spec


def test_partial_scaling_and_health_check_are_completed_with_defaults(
    objects: k8s.CustomObjectsApi, namespace: str
) -> None:
    manifest = falapp(
        machineTypes=["GPU-H100", "GPU-H200"],
        numGpus=2,
        scaler="hpa",
        scaling={"minConcurrency": 1, "maxConcurrency": 4},
        healthCheck={"path": "/healthz"},
        env=[{"name": "MODEL", "value": "sdxl"}],
        envFrom=[{"secretRef": {"name": "hf-token"}}],
    )
    created = create(objects, namespace, manifest)
    assert created["spec"]["scaling"]["keepAlive"] == 60
    assert created["spec"]["scaling"]["maxMultiplexing"] == 1
    assert created["spec"]["healthCheck"] == {
        "path": "/healthz",
        "method": "POST",
        "startPeriodSeconds": 30,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
        "callRegularly": True,  # fal: HealthCheck(call_regularly=True) by default
    }
    assert v1alpha1.FalApp.from_kube(created).spec == v1alpha1.FalApp.model_validate(manifest).spec


@pytest.mark.parametrize(
    "example",
    sorted((REPO_ROOT / "examples").glob("*/falapp.yaml")),
    ids=lambda path: path.parent.name,
)
def test_every_example_is_accepted_as_the_models_read_it(
    objects: k8s.CustomObjectsApi, namespace: str, example: pathlib.Path
) -> None:
    manifest = yaml.safe_load(example.read_text(encoding="utf-8"))
    created = create(objects, namespace, manifest)
    assert v1alpha1.FalApp.from_kube(created).spec == v1alpha1.FalApp.model_validate(manifest).spec


def test_status_is_written_only_through_the_status_subresource(
    objects: k8s.CustomObjectsApi, namespace: str
) -> None:
    created = create(objects, namespace, falapp())
    name = created["metadata"]["name"]
    # Values no operator would write for this app, so an operator running meanwhile cannot
    # make the test pass or fail.
    status = {"phase": "Degraded", "replicas": 42, "readyReplicas": 41}
    patched = set_status(objects, namespace, name, status, subresource_status=False)
    assert patched.get("status", {}).get("replicas") != 42
    patched = set_status(objects, namespace, name, status, subresource_status=True)
    assert patched["status"] == status
    assert patched["metadata"]["generation"] == created["metadata"]["generation"]


def test_a_status_rendered_by_the_models_is_accepted_as_is(
    objects: k8s.CustomObjectsApi, namespace: str
) -> None:
    created = create(objects, namespace, falapp(machineTypes=["GPU-H100"]))
    generation = created["metadata"]["generation"]
    now = datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0)
    status = v1alpha1.FalAppStatus(
        phase=v1alpha1.Phase.WAITING_FOR_CAPACITY,
        observed_generation=generation,
        machine_type="GPU-H100",
        replicas=1,
        desired_runners=1,
        runners=v1alpha1.RunnerCounts(pending=1),
        conditions=conditions.set_condition(
            [],
            condition_type=v1alpha1.ConditionType.SCHEDULED,
            status=v1alpha1.ConditionStatus.FALSE,
            reason=conditions.Reason.WAITING_FOR_GPU_CAPACITY,
            message="0/6 nodes are available: 6 Insufficient nvidia.com/gpu.",
            observed_generation=generation,
            now=now,
        ),
    )
    patched = set_status(
        objects, namespace, created["metadata"]["name"], status.to_kube(), subresource_status=True
    )
    assert v1alpha1.FalApp.from_kube(patched).status == status


def parse_table(output: str) -> list[dict[str, str]]:
    """Rows of kubectl's table output, sliced at the header's column starts (cells may be
    blank, so splitting on whitespace would shift them)."""
    header, *rows = output.splitlines()
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    names = header.split()
    bounds = [*starts[1:], None]
    return [
        {
            name: row[start:end].strip()
            for name, start, end in zip(names, starts, bounds, strict=True)
        }
        for row in rows
    ]


def test_kubectl_get_by_short_name_prints_the_columns(
    cluster: ClusterHandle, objects: k8s.CustomObjectsApi, namespace: str
) -> None:
    create(objects, namespace, falapp(name="sdxl", machineTypes=["GPU-H100"], numGpus=2))

    def read() -> dict[str, Any]:
        current = objects.get_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, "sdxl"
        )
        assert isinstance(current, dict)
        return current

    def consistent_snapshot() -> tuple[list[dict[str, str]], dict[str, Any]] | None:
        # An operator may be updating the status meanwhile: keep only a table printed while the
        # object did not change.
        before = read()
        table = parse_table(cluster.kubectl("get", "falapp", "-n", namespace))
        after = read()
        same = before["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]
        return (table, after) if same else None

    table, current = waiting.wait_for(
        consistent_snapshot, timeout=60, description="a table of an unchanged FalApp"
    )
    status = current.get("status", {})
    assert list(table[0]) == [
        "NAME",
        "MACHINE",
        "GPUS",
        "MIN",
        "MAX",
        "DESIRED",
        "RUNNERS",
        "READY",
        "AUTH",
        "PHASE",
        "AGE",
    ]
    assert {name: cell for name, cell in table[0].items() if name != "AGE"} == {
        "NAME": "sdxl",
        "MACHINE": str(status.get("machineType", "")),
        "GPUS": "2",
        "MIN": "0",
        "MAX": str(v1alpha1.DEFAULT_MAX_CONCURRENCY),
        "DESIRED": str(status.get("desiredRunners", "")),
        "RUNNERS": str(status.get("replicas", "")),
        "READY": str(status.get("readyReplicas", "")),
        "AUTH": "private",
        "PHASE": str(status.get("phase", "")),
    }


def test_kubectl_explain_shows_the_field_descriptions(
    cluster: ClusterHandle, falapp_crd: Any
) -> None:
    def explained() -> str | None:
        output: str = cluster.kubectl("explain", "falapp.spec.scaling.keepAlive", check=False)
        return output if "after its last request" in output else None

    output = waiting.wait_for(explained, timeout=90, description="kubectl explain to know FalApp")
    assert "keepAlive" in output
