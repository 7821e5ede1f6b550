"""spec_from_fal_options maps every fal.App attribute kubefal supports onto the FalApp spec."""

from __future__ import annotations

import re

import fal
import fal.app
import pydantic
import pytest

from kubefal_api import fal_options, v1alpha1


class EverythingSet(fal.App, keep_alive=300):  # type: ignore[no-untyped-call]
    machine_type = ["GPU-H200", "GPU-B200"]
    num_gpus = 4
    regions = ["us-east", "eu-west"]
    app_auth = "public"
    requirements = [["numpy==2.4.6"], ["scipy", "pillow"]]
    min_concurrency = 1
    max_concurrency = 6
    concurrency_buffer = 2
    concurrency_buffer_perc = 25
    scaling_delay = 15
    max_multiplexing = 4
    request_timeout = 120
    startup_timeout = 1800
    skip_retry_conditions = ["timeout", "server_error"]

    @fal.endpoint("/")
    def run(self) -> dict[str, str]:
        return {}

    @fal.endpoint(
        "/ping",
        health_check=fal.HealthCheck(
            start_period_seconds=120, timeout_seconds=10, failure_threshold=5, call_regularly=True
        ),
    )
    def ping(self) -> dict[str, str]:
        return {}


def test_every_supported_attribute_reaches_the_spec() -> None:
    wrapped = fal.app.wrap_app(EverythingSet)
    spec = fal_options.spec_from_fal_options(
        app="app.py::EverythingSet",
        host=wrapped.options.host,
        app_auth=wrapped.app_auth,
        requirements=EverythingSet.requirements,
        image="registry.example/team/app:1",
    )
    assert spec == v1alpha1.FalAppSpec(
        app="app.py::EverythingSet",
        image="registry.example/team/app:1",
        machine_types=["GPU-H200", "GPU-B200"],
        num_gpus=4,
        regions=["us-east", "eu-west"],
        auth=v1alpha1.AuthMode.PUBLIC,
        requirements=["numpy==2.4.6", "scipy", "pillow"],
        scaling=v1alpha1.ScalingSpec(
            min_concurrency=1,
            max_concurrency=6,
            keep_alive=300,
            concurrency_buffer=2,
            concurrency_buffer_perc=25,
            scaling_delay=15,
            max_multiplexing=4,
        ),
        request_timeout=120,
        startup_timeout=1800,
        skip_retry_conditions=[
            v1alpha1.RetryCondition.TIMEOUT,
            v1alpha1.RetryCondition.SERVER_ERROR,
        ],
        health_check=v1alpha1.HealthCheckSpec(
            path="/ping",
            start_period_seconds=120,
            timeout_seconds=10,
            failure_threshold=5,
            call_regularly=True,
        ),
    )


def test_a_single_machine_type_string_becomes_a_one_element_list() -> None:
    assert fal_options.machine_types_of("GPU-A100") == ["GPU-A100"]
    assert fal_options.machine_types_of(None) == ["S"]


def test_layered_requirements_are_flattened_in_install_order() -> None:
    assert fal_options.requirements_of([["a"], ["b", "c"]]) == ["a", "b", "c"]
    assert fal_options.requirements_of(["a", "b"]) == ["a", "b"]


def test_a_fal_app_kubefal_cannot_serve_is_rejected() -> None:
    host = {"machine_type": "S", "num_gpus": 2}
    with pytest.raises(pydantic.ValidationError, match=re.escape("spec.numGpus is allowed only")):
        fal_options.spec_from_fal_options(app="app.py::A", host=host, app_auth=None)
