"""A build Job the API server refuses is reported in ``status.build``, naming the field.

The operator (``python -m kubefal_operator``, against the e2e cluster's real API server) builds
``spec.containerImage`` apps in a Job. A manifest the CRD accepts can still render a Job the
API server refuses: here two build-context ConfigMaps put a file at the same path, which a
projected volume may not do. Retrying cannot help, so the FalApp's ``status.build`` must say
``Failed`` with the API server's reason (the field it names), instead of the operator retrying
the same refused request forever with nothing in the status. No registry runs: the operator's
``HEAD`` of the image fails (connection refused), so it goes on to build.

And a build Job deleted before it finished (by hand, as status.build.message advises for a
failed one) is made again.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e import cluster as local_cluster
from e2e import operator_harness as harness
from e2e.conftest import ClusterHandle
from e2e.operator_harness import Api, OperatorProcess
from kubefal_api import v1alpha1
from testkit import waiting


@pytest.fixture
def operator(
    cluster: ClusterHandle,
    falapp_crd: dict[str, Any],
    namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        kubeconfig=cluster.kubeconfig,
        log_path=tmp_path / "operator.log",
        catalogue_namespace=namespace,
        environment={
            # Nothing listens there: the registry check fails and the operator builds.
            "KUBEFAL_BUILD_REGISTRY": f"127.0.0.1:{local_cluster.free_port()}/apps",
            "KUBEFAL_BUILD_REGISTRY_INSECURE": "true",
        },
        arguments=harness.exact_namespace_arguments([namespace]),
    )
    e2e_logs.append(process.log_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_a_build_job_the_api_server_refuses_fails_the_build_naming_the_field(
    api_client: k8s.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    api = Api.of(api_client)
    context = [
        {"name": name, "items": [{"key": "file", "path": "same/path.txt"}]}
        for name in ("context-a", "context-b")
    ]
    api.create_app(
        namespace,
        {
            "apiVersion": v1alpha1.API_VERSION,
            "kind": v1alpha1.KIND,
            "metadata": {"name": "refused"},
            "spec": {
                "app": "app.py::Demo",
                "containerImage": {"dockerfile": "FROM python:3.11-slim\n", "context": context},
            },
        },
    )

    def failed() -> dict[str, Any] | None:
        build = (api.app(namespace, "refused").get("status") or {}).get("build") or {}
        return build if build.get("phase") == v1alpha1.BuildPhase.FAILED.value else None

    build = waiting.wait_for(
        failed,
        timeout=harness.TIMEOUT,
        description="status.build Failed",
        describe_last=operator.log_tail,
    )
    assert build["message"].startswith("the API server refused the build Job: ")
    assert "spec.template.spec.volumes" in build["message"]
    assert "conflicting duplicate paths" in build["message"]
    assert build["image"].startswith("127.0.0.1:")
    assert "job" not in build
    assert k8s.BatchV1Api(api_client).list_namespaced_job(namespace).items == []


def test_deleting_the_job_of_an_unfinished_build_builds_again(
    api_client: k8s.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    """Regression: the Job's deletion was ignored, so an app whose build Job was deleted while
    Building (or Failed, which status.build.message says to do to build again) stayed so until
    its spec changed or the operator restarted."""
    api = Api.of(api_client)
    jobs = k8s.BatchV1Api(api_client)
    api.create_app(
        namespace,
        {
            "apiVersion": v1alpha1.API_VERSION,
            "kind": v1alpha1.KIND,
            "metadata": {"name": "rebuilt"},
            "spec": {
                "app": "app.py::Demo",
                "containerImage": {"dockerfile": "FROM python:3.11-slim\n"},
            },
        },
    )

    def building() -> dict[str, Any] | None:
        build = (api.app(namespace, "rebuilt").get("status") or {}).get("build") or {}
        return build if build.get("phase") == v1alpha1.BuildPhase.BUILDING.value else None

    build = waiting.wait_for(
        building, timeout=harness.TIMEOUT, description="Building", describe_last=operator.log_tail
    )
    first = jobs.read_namespaced_job(build["job"], namespace).metadata.uid
    jobs.delete_namespaced_job(build["job"], namespace, propagation_policy="Background")

    def recreated() -> str | None:
        try:
            uid = jobs.read_namespaced_job(build["job"], namespace).metadata.uid
        except k8s.ApiException as error:
            if error.status == 404:
                return None
            raise
        return str(uid) if uid != first else None

    waiting.wait_for(
        recreated,
        timeout=harness.TIMEOUT,
        description="a new build Job",
        describe_last=operator.log_tail,
    )
