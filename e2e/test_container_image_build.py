"""``kubefal deploy`` of a ``fal.ContainerImage`` app, built in the cluster, on the real node.

A registry runs on 127.0.0.1 (``crane registry serve``, e2e/registry.py) and holds the app's
base image (the Debian python 3.11 base ``make images`` made, standing in for
``python:3.11-slim``); containerd of the real node pulls from it over plain HTTP. The operator
is configured as the chart's ``build`` values would (registry, builder image, where build pods
run). Then:

* ``kubefal deploy`` creates the FalApp; the operator finds no image for its content hash and
  runs a build Job on the real node (the kubefal-builder image: buildah with the app's
  ``build_args`` and build secret, the runner layered on), which pushes to the registry; the
  CLI prints the Job's log as it comes;
* the runner pod runs that image on the real node (a real container, its ``python`` the
  image's own interpreter with the runner's packages added), and the real ``fal_client`` gets
  an answer that only the build could have produced (the build argument and the secret's
  length, written by ``RUN`` steps);
* a second deploy of the same content (the same class under another name) finds the image in
  the registry: no Job, ``status.build.phase: Cached``, and it serves too.

Sandbox adaptations, as in e2e/test_helm_real_node.py: the real node has no pod network, so
the runner Deployment gets ``hostNetwork`` and the real node's placement by a patch of the
test's own field manager (the operator's apply leaves fields it does not own alone), and the
runner binds 127.0.0.1 (``spec.env``). Runs with ``KUBEFAL_REAL_NODE=1`` after ``make images``.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from e2e import controlplane_harness as harness
from e2e import images, realnode, registry
from e2e import system as whole
from e2e.conftest import ClusterHandle
from e2e.test_realnode import node as real_node  # noqa: F401  (the real-node fixture)
from kubefal_api import apikeys, v1alpha1
from kubefal_operator import build
from testkit import waiting

# A build pulls the base, copies the runner's packages and pushes (1-2 min on a loaded 2-core
# machine), then a runner pulls the image: more than the suite's 300 s per test.
pytestmark = pytest.mark.timeout(1200)

key_namespace = harness.key_namespace
key = harness.key
cp_tls = harness.cp_tls
deploying_plane = harness.deploying_plane

BASE_REPOSITORY = "python"
BASE_TAG = "3.11-bookworm"
GREETING = "hello from the build"
SECRET = "s3cr3t-token"

APP = """\
import sys

import fal
from fal.container import ContainerImage

DOCKERFILE = '''\\
FROM {registry}/{base}
ARG GREETING
RUN echo "$GREETING" > /greeting.txt
RUN --mount=type=secret,id=TOKEN wc -c < /run/secrets/TOKEN > /token-length.txt
'''


class Greeter(
    fal.App,
    kind="container",
    image=ContainerImage.from_dockerfile_str(
        DOCKERFILE, build_args={{"GREETING": {greeting!r}}}, secrets={{"TOKEN": {secret!r}}}
    ),
):
    app_name = "greeter"
    machine_type = "S"

    @fal.endpoint("/")
    def greet(self) -> dict[str, object]:
        with open("/greeting.txt") as greeting, open("/token-length.txt") as length:
            return {{
                "greeting": greeting.read().strip(),
                "token_length": int(length.read()),
                "python": sys.executable,
            }}
"""


@pytest.fixture(scope="module")
def node(real_node: realnode.RealNode) -> realnode.RealNode:  # noqa: F811
    """The real node, with the builder image imported (the runner image is there already)."""
    name = "kubefal-builder"
    if images.image_ref(name) not in real_node.ctr("images", "list", "--quiet"):
        assert images.archive(name).is_file(), f"run `make images` ({name} is missing)"
        real_node.import_image(images.archive(name))
    return real_node


@pytest.fixture
def local_registry(tmp_path: pathlib.Path, node: realnode.RealNode) -> Iterator[registry.Registry]:
    """A registry on 127.0.0.1 holding the base image; the real node pulls from it over HTTP."""
    with registry.serving(tmp_path / "registry") as served:
        node.allow_plain_http_registry(served.address)
        env = images.podman_env(tmp_path)
        listed = subprocess.run(
            ["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.split()
        bases = [ref for ref in listed if ref.startswith("localhost/kubefal-base:")]
        assert bases, "the Debian base image is not in the local store: run `make images`"
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"containers-storage:{bases[0]}",
                f"docker://{served.address}/{BASE_REPOSITORY}:{BASE_TAG}",
            ],
            check=True,
            env=env,
            timeout=300,
        )
        yield served


def _operator_env(served: registry.Registry) -> dict[str, str]:
    """The operator's settings as the chart's build values would give them."""
    overrides = {
        "nodeSelector": {"kubernetes.io/hostname": realnode.NODE_NAME},
        "tolerations": [realnode.TOLERATION],
        "hostNetwork": True,
        "dnsPolicy": "Default",
    }
    return {
        "KUBEFAL_BUILD_REGISTRY": f"{served.address}/apps",
        "KUBEFAL_BUILD_REGISTRY_INSECURE": "true",
        "KUBEFAL_BUILDER_IMAGE": images.image_ref("kubefal-builder"),
        "KUBEFAL_BUILD_POD_OVERRIDES": json.dumps(overrides),
    }


@pytest.fixture
def running(
    cluster: ClusterHandle,
    namespace: str,
    key_namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
    local_registry: registry.Registry,
) -> Iterator[whole.System]:
    """Gateway, operator (building into the local registry) and pod runner for one test
    (also what the control plane of ``deploying_plane`` deploys to)."""
    with whole.running_system(
        cluster.kubeconfig,
        workdir=tmp_path / "system",
        namespaces=[namespace],
        key_namespace=key_namespace,
        operator_env=_operator_env(local_registry),
    ) as system:
        e2e_logs.extend([*system.logs, local_registry.log])
        yield system
        e2e_logs.extend(system.pods.logs())


def _write_app(tmp_path: pathlib.Path, served: registry.Registry, greeting: str) -> pathlib.Path:
    app = tmp_path / "greeter" / "app.py"
    app.parent.mkdir(exist_ok=True)
    app.write_text(
        APP.format(
            registry=served.address,
            base=f"{BASE_REPOSITORY}:{BASE_TAG}",
            greeting=greeting,
            secret=SECRET,
        )
    )
    return app


def _deploy(
    cluster: ClusterHandle, namespace: str, app: pathlib.Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "KUBEFAL_"))}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kubefal_cli",
            "deploy",
            f"{app}::Greeter",
            "-n",
            namespace,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--timeout",
            "600",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )


def _build_jobs(api_client: k8s.ApiClient, namespace: str, app: str) -> list[k8s.V1Job]:
    return list(
        k8s.BatchV1Api(api_client)
        .list_namespaced_job(namespace, label_selector=f"{build.LABEL_BUILD_OF}={app}")
        .items
    )


def _serve_on_the_real_node(
    cluster: ClusterHandle, api_client: k8s.ApiClient, namespace: str, app: str
) -> None:
    """The sandbox's part (see the docstring): the runner binds loopback, its pods go to the
    real node with the host's network."""
    cluster.kubectl(
        "patch",
        "falapp",
        app,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"env": [{"name": "KUBEFAL_RUNNER_HOST", "value": "127.0.0.1"}]}}),
    )

    def rendered() -> bool:
        text = cluster.kubectl("get", "deployment", app, "-n", namespace, "-o", "json", check=False)
        if not text:
            return False
        (container,) = json.loads(text)["spec"]["template"]["spec"]["containers"]
        return any(item["name"] == "KUBEFAL_RUNNER_HOST" for item in container.get("env", []))

    waiting.wait_for(rendered, timeout=120, description=f"Deployment {app} with spec.env")
    placement = {
        "spec": {
            "template": {
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": realnode.NODE_NAME},
                    "tolerations": [realnode.TOLERATION],
                    "hostNetwork": True,
                    "dnsPolicy": "Default",
                }
            }
        }
    }
    cluster.kubectl(
        "patch",
        "deployment",
        app,
        "-n",
        namespace,
        "--field-manager=e2e-sandbox",
        "--type=strategic",
        "-p",
        json.dumps(placement),
    )

    def only_on_the_real_node() -> bool:
        # A runner started before the patch runs on a kwok node (as a local process): wait
        # until the rollout replaced it, so the answer can only come from the real container.
        pods = k8s.CoreV1Api(api_client).list_namespaced_pod(
            namespace, label_selector=f"kubefal.io/app={app}"
        )
        return all(p.spec.node_name == realnode.NODE_NAME for p in pods.items)

    waiting.wait_for(
        only_on_the_real_node,
        timeout=240,
        description=f"every runner of {app} on the real node",
        describe_last=lambda: cluster.kubectl(
            "get", "pods", "-n", namespace, "-o", "wide", check=False
        ),
    )


def _runner_pod(api_client: k8s.ApiClient, namespace: str, app: str) -> k8s.V1Pod:
    pods = k8s.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"kubefal.io/app={app}"
    )
    running = [p for p in pods.items if p.status.phase == "Running"]
    assert len(running) == 1, [(p.metadata.name, p.status.phase) for p in pods.items]
    return running[0]


def test_a_container_image_app_is_built_in_the_cluster_and_served_from_the_registry(
    cluster: ClusterHandle,
    node: realnode.RealNode,
    local_registry: registry.Registry,
    api_client: k8s.ApiClient,
    namespace: str,
    key_namespace: str,
    key: apikeys.ApiKey,
    tmp_path: pathlib.Path,
    running: whole.System,
) -> None:
    repository = f"apps/{namespace}"
    app = _write_app(tmp_path, local_registry, GREETING)
    expected = {"greeting": GREETING, "token_length": len(SECRET), "python": ""}
    # 1. Built in the cluster, pushed, its log on the deployer's terminal.
    deployed = _deploy(cluster, namespace, app)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    falapp = harness.get_falapp(api_client, namespace=namespace, name="greeter")
    status = falapp["status"]["build"]
    assert status["phase"] == v1alpha1.BuildPhase.BUILT, status
    reference = status["image"]
    tag = reference.rsplit(":", 1)[1]
    assert reference == f"{local_registry.address}/{repository}:{tag}"
    assert re.fullmatch(r"[0-9a-f]{40}", tag)
    assert local_registry.has(repository, tag)
    assert "STEP 3/" in deployed.stderr and f"kubefal-build: pushed {reference}" in (
        deployed.stderr
    ), deployed.stderr
    (job,) = _build_jobs(api_client, namespace, "greeter")
    assert job.status.succeeded == 1
    (build_pod,) = (
        k8s.CoreV1Api(api_client)
        .list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}")
        .items
    )
    assert build_pod.spec.node_name == realnode.NODE_NAME
    # The secret's value is in no object the build made, only its length in the image.
    assert SECRET not in json.dumps(api_client.sanitize_for_serialization(job))

    # 2. The runner pod runs that image on the real node; fal_client gets the answer.
    _serve_on_the_real_node(cluster, api_client, namespace, "greeter")
    answer = harness.call_app(running, f"{namespace}/greeter", key=key)
    assert answer == {**expected, "python": "/opt/kubefal-runner/bin/python"}
    pod = _runner_pod(api_client, namespace, "greeter")
    assert pod.spec.node_name == realnode.NODE_NAME
    (container,) = pod.status.container_statuses
    assert container.image == reference
    runtime, _, container_id = container.container_id.partition("://")
    assert runtime == "containerd"
    assert container_id in node.ctr("containers", "list", "--quiet").split()

    # 3. The same content again (another name): the registry has it, nothing is built.
    cluster.kubectl("delete", "falapp", "greeter", "-n", namespace, "--wait=true")

    def runner_gone() -> bool:
        pods = k8s.CoreV1Api(api_client).list_namespaced_pod(
            namespace, label_selector="kubefal.io/app=greeter"
        )
        return not pods.items

    waiting.wait_for(runner_gone, timeout=180, description="the first runner pod gone")
    again = _deploy(cluster, namespace, app, "--name", "greeter-again")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "cache hit" in again.stderr, again.stderr
    assert "kubefal-build:" not in again.stderr
    status = harness.get_falapp(api_client, namespace=namespace, name="greeter-again")["status"][
        "build"
    ]
    assert status["phase"] == v1alpha1.BuildPhase.CACHED and status["image"] == reference
    assert _build_jobs(api_client, namespace, "greeter-again") == []
    assert local_registry.tags(repository) == [tag]
    _serve_on_the_real_node(cluster, api_client, namespace, "greeter-again")
    answer = harness.call_app(running, f"{namespace}/greeter-again", key=key)
    assert answer == {**expected, "python": "/opt/kubefal-runner/bin/python"}
    assert _runner_pod(api_client, namespace, "greeter-again").spec.node_name == (
        realnode.NODE_NAME
    )


def test_fal_deploy_of_a_container_image_app_builds_it_in_the_cluster(
    cluster: ClusterHandle,
    node: realnode.RealNode,
    local_registry: registry.Registry,
    running: whole.System,
    deploying_plane: harness.ControlPlaneProcess,
    api_client: k8s.ApiClient,
    namespace: str,
    key: apikeys.ApiKey,
    tmp_path: pathlib.Path,
) -> None:
    """The unmodified ``fal deploy``: the control plane maps the SDK's container environment
    to spec.containerImage and the build secrets to a Secret, and streams the build's log."""
    greeting = "hello from fal deploy"
    app = _write_app(tmp_path, local_registry, greeting)
    deployed = harness.run_fal(
        deploying_plane,
        "deploy",
        f"{app}::Greeter",
        "--app-name",
        "greeter-fal",
        key=key,
        home=tmp_path,
        timeout=900,
    )
    output = deployed.stdout + deployed.stderr
    assert deployed.returncode == 0, output
    falapp = harness.get_falapp(api_client, namespace=namespace, name="greeter-fal")
    status = falapp["status"]["build"]
    assert status["phase"] == v1alpha1.BuildPhase.BUILT, status
    assert f"kubefal-build: pushed {status['image']}" in output, output
    assert SECRET not in json.dumps(falapp)
    tag = status["image"].rsplit(":", 1)[1]
    assert local_registry.has(f"apps/{namespace}", tag)
    _serve_on_the_real_node(cluster, api_client, namespace, "greeter-fal")
    answer = harness.call_app(running, f"{namespace}/greeter-fal", key=key)
    assert answer == {
        "greeting": greeting,
        "token_length": len(SECRET),
        "python": "/opt/kubefal-runner/bin/python",
    }
