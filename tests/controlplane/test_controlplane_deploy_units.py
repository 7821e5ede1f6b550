"""``fal deploy``'s request turned into a FalApp without executing or unpickling anything."""

from __future__ import annotations

import functools
import json
import pickle
import tracemalloc
from collections.abc import Iterator
from typing import Any

import grpc
import isolate_proto
import pytest

from kubefal_api import bundles
from kubefal_controlplane import auth, deploy, deploy_spec, errors, runner_logs, service, settings

TWO_APPS = """
import fal

class Base(fal.App):
    pass

class Derived(Base):
    pass

class NotAnApp:
    pass
"""


def _environment(kind: str = "virtualenv", **config: Any) -> isolate_proto.EnvironmentDefinition:
    struct = isolate_proto.Struct()
    struct.update(config)
    return isolate_proto.EnvironmentDefinition(kind=kind, configuration=struct)


def test_app_classes_are_found_by_parsing_only() -> None:
    assert deploy.app_classes(TWO_APPS) == ["Base", "Derived"]


def test_of_several_app_classes_the_one_the_pickle_names_is_chosen() -> None:
    # cloudpickle writes the name of a class it pickles by value as a string argument.
    function = pickle.dumps(("Derived", "fal.app"))

    assert deploy.choose_class(TWO_APPS, function) == "Derived"
    with pytest.raises(errors.RpcFailure) as raised:
        deploy.choose_class(TWO_APPS, pickle.dumps(("neither",)))
    assert raised.value.code is grpc.StatusCode.FAILED_PRECONDITION


def test_a_pickle_is_scanned_not_loaded() -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (exec, ("raise SystemExit('unpickled!')",))

    strings = deploy.pickle_strings(pickle.dumps(Boom()))

    assert "raise SystemExit('unpickled!')" in strings


def test_a_file_without_an_app_or_that_does_not_parse_is_invalid_argument() -> None:
    for source, message in (("x = 1\n", "no class deriving"), ("def (:\n", "does not parse")):
        with pytest.raises(errors.RpcFailure) as raised:
            deploy.choose_class(source, b"")
        assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.message.startswith("source_code: ")
        assert message in raised.value.message


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("x = " + "-" * 200_000 + "1\n", grpc.StatusCode.INVALID_ARGUMENT),
        ("x = " + "1+" * 200_000 + "1\n", grpc.StatusCode.INVALID_ARGUMENT),
        ("class A(fal.App):\n    pass\n#" + "x" * 1_000_000, grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_a_hostile_or_oversized_app_file_is_refused_naming_source_code(
    source: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(errors.RpcFailure) as raised:
        deploy.choose_class(source, b"")
    assert raised.value.code is code
    assert raised.value.message.startswith("source_code: ")


def test_too_many_requirements_are_refused_naming_environments() -> None:
    request = isolate_proto.RegisterApplicationRequest(
        environments=[_environment(requirements=[f"pkg{i}" for i in range(600)])]
    )
    with pytest.raises(errors.RpcFailure) as raised:
        deploy_spec.falapp_spec(
            request, class_name="Demo", config_map="c", existing=None, secrets_name="s"
        )
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith("environments: requirements")


def test_requirements_keep_the_users_and_drop_fals_serving_stack() -> None:
    environments = [
        _environment(
            requirements=[
                "torch==2.5",
                "numpy",
                "fastapi==0.136.3",
                "pydantic==2.14.4",
                "uvicorn",
                "httpx>=0.20",
                "numpy",
            ],
            python_version="3.11",
        )
    ]

    assert deploy.requirement_layers(environments) == [["torch==2.5", "numpy"]]
    assert deploy.requirement_fields(deploy.requirement_layers(environments)) == {
        "requirements": ["torch==2.5", "numpy"]
    }


def test_requirement_layers_stay_layers_and_fals_own_layer_is_dropped() -> None:
    # What the SDK sends for `requirements = [["torch==2.5"], ["diffusers", "numpy"]]`:
    # its serving stack appended as a layer of its own.
    environments = [
        _environment(
            requirements=[
                ["torch==2.5"],
                ["diffusers", "numpy"],
                ["fastapi==0.136.3", "pydantic==2.14.4", "uvicorn", "httpx>=0.20"],
            ]
        )
    ]

    layers = deploy.requirement_layers(environments)

    assert layers == [["torch==2.5"], ["diffusers", "numpy"]]
    assert deploy.requirement_fields(layers) == {"requirementLayers": layers}


def test_a_mix_of_strings_and_layers_is_invalid_argument() -> None:
    with pytest.raises(errors.RpcFailure) as raised:
        deploy.requirement_layers([_environment(requirements=["a", ["b"]])])

    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith("environments[0].requirements: ")


def test_a_container_apps_requirements_are_fals_own_and_left_out() -> None:
    # fal.ContainerImage apps are built in the cluster (test_controlplane_container_image.py).
    container = _environment("container", requirements=["fastapi"], image={"dockerfile_str": "x"})
    assert deploy.requirement_layers([container]) == []


def _request(**fields: Any) -> isolate_proto.RegisterApplicationRequest:
    return isolate_proto.RegisterApplicationRequest(
        application_name="demo",
        environments=[_environment(requirements=["numpy"])],
        machine_requirements=isolate_proto.MachineRequirements(
            machine_types=["GPU-H100"], num_gpus=2, keep_alive=30, max_concurrency=4
        ),
        auth_mode=isolate_proto.ApplicationAuthMode.SHARED,
        deployment_strategy=isolate_proto.DeploymentStrategy.RECREATE,
        **fields,
    )


def test_the_falapp_spec_takes_the_classes_settings() -> None:
    spec = deploy_spec.falapp_spec(
        _request(scale=True),
        class_name="Demo",
        config_map="demo-src-1",
        existing=None,
        secrets_name="kubefal-secrets",
    )

    assert spec == {
        "app": "app.py::Demo",
        "source": {"configMapRef": {"name": "demo-src-1"}},
        "requirements": ["numpy"],
        "auth": "shared",
        "strategy": "recreate",
        "envFrom": [{"secretRef": {"name": "kubefal-secrets", "optional": True}}],
        "machineTypes": ["GPU-H100"],
        "numGpus": 2,
        "scaling": {"keepAlive": 30, "maxConcurrency": 4},
    }


def test_without_reset_scale_a_redeploy_keeps_the_apps_scaling() -> None:
    existing = {"spec": {"scaling": {"keepAlive": 5, "minConcurrency": 1}}}

    kept = deploy_spec.falapp_spec(
        _request(scale=False),
        class_name="Demo",
        config_map="c",
        existing=existing,
        secrets_name="s",
    )
    reset = deploy_spec.falapp_spec(
        _request(scale=True),
        class_name="Demo",
        config_map="c",
        existing=existing,
        secrets_name="s",
    )

    assert kept["scaling"] == {"keepAlive": 5, "minConcurrency": 1}
    assert reset["scaling"] == {"keepAlive": 30, "maxConcurrency": 4}


def test_a_redeploy_with_reset_scale_keeps_the_kubefal_scaling_policy() -> None:
    # fal's protocol cannot carry spec.scaling.policy, so no fal deploy may drop it.
    existing = {"spec": {"scaling": {"keepAlive": 5, "policy": "countStarting"}}}

    reset = deploy_spec.falapp_spec(
        _request(scale=True),
        class_name="Demo",
        config_map="c",
        existing=existing,
        secrets_name="s",
    )

    assert reset["scaling"] == {"keepAlive": 30, "maxConcurrency": 4, "policy": "countStarting"}


def test_new_source_is_a_new_config_map_name() -> None:
    first = deploy.source_config_map(namespace="team-a", app_name="demo", source="a = 1\n")
    second = deploy.source_config_map(namespace="team-a", app_name="demo", source="a = 2\n")

    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert first["metadata"]["name"].startswith("demo-src-")
    with pytest.raises(errors.RpcFailure):
        deploy.source_config_map(namespace="team-a", app_name="demo", source="x" * 1_000_000)


def _runtime_pickle(relative_path: str | None) -> bytes:
    """What fal's SDK pickles for an app with app_files: the callable bound to its
    FunctionRuntimeConfig (fal.api.api._prepare_partial_func)."""
    import cloudpickle
    from fal.api.api import FunctionRuntimeConfig

    config = FunctionRuntimeConfig(app_files_relative_path=relative_path)
    return bytes(cloudpickle.dumps(functools.partial(print, config, "app")))


@pytest.mark.parametrize(
    ("relative_path", "expected"),
    [(".", "."), ("app", "app"), ("services/app", "services/app"), (None, ".")],
)
def test_the_app_files_dir_is_read_from_the_pickle_without_loading_it(
    relative_path: str | None, expected: str
) -> None:
    assert deploy.app_files_dir(_runtime_pickle(relative_path)) == expected
    assert deploy.app_files_dir(b"not a pickle") == "."


def test_reading_the_app_files_dir_holds_no_memory_for_a_pickles_memo_writes() -> None:
    # The pickle is the caller's, as large as a message: 4 MiB of None + MEMOIZE pairs kept
    # about 170 MB (a memo entry and a token each) for the length of the deploy's scan.
    hostile = b"\x80\x04" + b"N\x94" * (2 * 1024 * 1024) + b"."
    tracemalloc.start()
    try:
        found = deploy.app_files_dir(hostile)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert found == "."
    assert peak < 16 * 1024 * 1024


def test_an_app_file_outside_the_context_dir_is_refused_naming_the_field() -> None:
    with pytest.raises(errors.RpcFailure) as raised:
        deploy.app_files_dir(_runtime_pickle("../elsewhere"))

    assert raised.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "app_files_context_dir" in raised.value.message


def test_app_files_and_the_app_file_share_one_bundle() -> None:
    files = {"app/prompts/a.txt": b"hello\n", "shared/blob.bin": bytes(range(256))}
    objects = deploy.source_objects(
        namespace="team-a",
        app_name="demo",
        source="import fal\n",
        function=b"",
        modules=[],
        python="3.11.9",
        app_files=files,
        app_dir="app",
    )

    assert objects.app_path == "app/app.py"
    unpacked = bundles.unpack(objects.config_maps, objects.spec_source)
    assert unpacked == {**files, "app/app.py": b"import fal\n"}
    spec = deploy_spec.falapp_spec(
        isolate_proto.RegisterApplicationRequest(),
        class_name="Demo",
        existing=None,
        secrets_name="s",
        source=objects.spec_source,
        app_path=objects.app_path,
    )
    assert spec["app"] == "app/app.py::Demo"
    with pytest.raises(errors.RpcFailure) as clash:
        deploy.source_objects(
            namespace="team-a",
            app_name="demo",
            source="x = 1\n",
            function=b"",
            modules=[],
            python=None,
            app_files={"app.py": b"mine"},
        )
    assert "app.py" in clash.value.message


@pytest.mark.parametrize(
    ("body", "modules"),
    [
        ("local_python_modules = ['helpers', 'pkg.sub']", ["helpers", "pkg.sub"]),
        ("local_python_modules: list[str] = ['helpers']", ["helpers"]),
        ("local_python_modules = []", []),
        ("pass", []),
    ],
)
def test_local_modules_are_read_from_the_class_body(body: str, modules: list[str]) -> None:
    source = f"import fal\n\nclass Demo(fal.App):\n    {body}\n"

    assert deploy.local_modules(source, "Demo") == modules


def test_computed_local_modules_are_refused_naming_the_field() -> None:
    source = "import fal\n\nclass Demo(fal.App):\n    local_python_modules = NAMES\n"

    with pytest.raises(errors.RpcFailure) as raised:
        deploy.local_modules(source, "Demo")

    assert raised.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "Demo.local_python_modules must be a literal list" in raised.value.message


def test_local_modules_ship_the_pickle_unopened_with_a_note_for_the_runner() -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (exec, ("raise SystemExit('unpickled!')",))

    function = pickle.dumps(Boom())

    objects = deploy.source_objects(
        namespace="team-a",
        app_name="demo",
        source="import fal\n",
        function=function,
        modules=["helpers"],
        python=deploy.RUNNER_PYTHON,
    )

    files = bundles.unpack(objects.config_maps, objects.spec_source)
    assert files == {
        "app.py": b"import fal\n",
        deploy.FUNCTION_FILE: function,
        deploy.LOCAL_MODULES_NOTE: json.dumps(
            {"python": deploy.RUNNER_PYTHON, "pickle": deploy.FUNCTION_FILE, "modules": ["helpers"]}
        ).encode(),
    }
    labels = objects.config_maps[0]["metadata"]["labels"]
    assert labels["kubefal.io/source-of"] == "demo"
    assert objects.stale_selector("demo") == (
        f"kubefal.io/source-of=demo,kubefal.io/source-revision!={objects.revision}"
    )


def test_local_modules_from_another_python_minor_version_fail_the_deploy() -> None:
    with pytest.raises(errors.RpcFailure) as raised:
        deploy.source_objects(
            namespace="team-a",
            app_name="demo",
            source="import fal\n",
            function=b"",
            modules=["helpers"],
            python="3.12",
        )

    assert raised.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.message.startswith("environments[0].python_version: your Python is 3.12")
    assert f"deploy from Python {deploy.RUNNER_PYTHON}" in raised.value.message


def test_an_app_without_local_modules_is_one_config_map_as_before() -> None:
    objects = deploy.source_objects(
        namespace="team-a",
        app_name="demo",
        source="import fal\n",
        function=b"",
        modules=[],
        python="3.13",
    )

    (config_map,) = objects.config_maps
    assert config_map["data"] == {"app.py": "import fal\n"}
    assert objects.spec_source == {"configMapRef": {"name": config_map["metadata"]["name"]}}


def test_a_redeploy_keeps_the_fields_fal_deploy_does_not_decide() -> None:
    existing = {
        "spec": {
            "app": "old.py::Old",
            "image": "registry.example/my-runner:1",
            "scaler": "keda",
            "env": [{"name": "MODE", "value": "prod"}],
            "envFrom": [{"configMapRef": {"name": "settings"}}],
            "healthCheck": {"path": "/old"},
            "scaling": {"keepAlive": 5},
        }
    }

    spec = deploy_spec.falapp_spec(
        _request(scale=True),
        class_name="Demo",
        config_map="c",
        existing=existing,
        secrets_name="kubefal-secrets",
    )

    assert spec["image"] == "registry.example/my-runner:1"
    assert spec["scaler"] == "keda"
    assert spec["env"] == [{"name": "MODE", "value": "prod"}]
    assert spec["envFrom"] == [
        {"configMapRef": {"name": "settings"}},
        {"secretRef": {"name": "kubefal-secrets", "optional": True}},
    ]
    assert spec["app"] == "app.py::Demo"
    assert "healthCheck" not in spec  # the class has none now


class _BuildLog:
    """A build pod's followed log (the Kubernetes client's open response), as chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def stream(self, amount: int) -> Iterator[bytes]:
        yield from self.chunks

    def release_conn(self) -> None:
        pass


class _BuildCluster:
    """The two backend calls a deploy's build log makes: the build pod, then its log."""

    def __init__(self, log: _BuildLog) -> None:
        self.log = log

    def build_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return [{"metadata": {"name": f"{job}-pod"}, "status": _RUNNING}]

    def follow_build_log(self, namespace: str, name: str) -> _BuildLog:
        return self.log


_RUNNING = {"containerStatuses": [{"state": {"running": {"startedAt": "2026-12-05T12:00:00Z"}}}]}


class _Active:
    def is_active(self) -> bool:
        return True


def test_a_build_log_that_never_ends_its_line_reaches_the_deploy_in_bounded_pieces() -> None:
    # A build's output is the tenant's: 3 MiB without a newline was held whole in the control
    # plane and then sent as one log message (over the 4 MiB gRPC limit with a little more).
    endless = b"x" * (3 * 1024 * 1024)
    chunks = [endless[i : i + 4096] for i in range(0, len(endless), 4096)] + [b"!\ndone\n"]
    controller = service.Controller(
        cluster=_BuildCluster(_BuildLog(chunks)),  # type: ignore[arg-type]
        authenticator=auth.Authenticator(lambda _key_id: None, cache_seconds=1.0),
        settings=settings.Settings(local_credentials=True),
    )

    results = list(controller._build_logs("team-a", "demo-build", _Active()))  # type: ignore[arg-type]

    messages = [entry.message for result in results[1:] for entry in result.logs]
    assert results[0].logs[0].message == "Building the app's image in Job team-a/demo-build:"
    assert max(len(message) for message in messages) <= runner_logs.MAX_LINE_BYTES + 4096
    assert "".join(messages[:-1]) == "x" * len(endless) + "!"
    assert messages[-1] == "done"
