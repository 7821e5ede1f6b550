"""The FalApp defaults equal what the real fal SDK applies to an app that sets nothing."""

from __future__ import annotations

from typing import Any

import fal
import fal.app
import fal.sdk
import pytest

from kubefal_api import fal_options, v1alpha1


class NothingSet(fal.App):  # type: ignore[no-untyped-call]
    @fal.endpoint("/")
    def run(self) -> dict[str, str]:
        return {}


@pytest.fixture(scope="module")
def default_host() -> dict[str, Any]:
    return dict(fal.app.wrap_app(NothingSet).options.host)


@pytest.fixture(scope="module")
def default_spec() -> v1alpha1.FalAppSpec:
    return v1alpha1.FalAppSpec(app="app.py::NothingSet")


def test_machine_type_defaults_to_the_sdks_single_type(
    default_host: dict[str, Any], default_spec: v1alpha1.FalAppSpec
) -> None:
    assert default_spec.machine_types == [default_host["machine_type"]]


def test_num_gpus_and_regions_are_unset_like_the_sdk(
    default_host: dict[str, Any], default_spec: v1alpha1.FalAppSpec
) -> None:
    assert default_host["num_gpus"] is None
    assert default_spec.num_gpus is None
    assert default_host["regions"] is None
    assert default_spec.regions == []


def test_keep_alive_defaults_to_fal_apps_value(
    default_host: dict[str, Any], default_spec: v1alpha1.FalAppSpec
) -> None:
    assert default_spec.scaling.keep_alive == default_host["keep_alive"]


def test_scaling_defaults_equal_the_sdks_serverless_defaults(
    default_spec: v1alpha1.FalAppSpec,
) -> None:
    scaling = default_spec.scaling
    assert scaling.min_concurrency == fal.sdk.FAL_SERVERLESS_DEFAULT_MIN_CONCURRENCY
    assert scaling.max_multiplexing == fal.sdk.FAL_SERVERLESS_DEFAULT_MAX_MULTIPLEXING
    assert scaling.concurrency_buffer == fal.sdk.FAL_SERVERLESS_DEFAULT_CONCURRENCY_BUFFER
    assert scaling.concurrency_buffer_perc == (
        fal.sdk.FAL_SERVERLESS_DEFAULT_CONCURRENCY_BUFFER_PERC
    )


def test_startup_timeout_defaults_to_the_sdks_platform_default(
    default_host: dict[str, Any], default_spec: v1alpha1.FalAppSpec
) -> None:
    assert "startup_timeout" not in default_host
    assert default_spec.startup_timeout == fal.app.DEFAULT_PLATFORM_STARTUP_TIMEOUT


@pytest.mark.parametrize(
    "option",
    ["max_concurrency", "request_timeout", "scaling_delay", "skip_retry_conditions"],
)
def test_options_the_sdk_leaves_to_the_platform_are_absent_from_a_default_app(
    default_host: dict[str, Any], option: str
) -> None:
    # kubefal documents its own default for these; if the SDK starts setting one, this fails
    # and the FalApp default must be revisited.
    assert default_host.get(option) is None


def test_auth_defaults_to_private_as_fal_deploy_does() -> None:
    assert fal.app.wrap_app(NothingSet).app_auth is None
    assert v1alpha1.FalAppSpec(app="app.py::NothingSet").auth is v1alpha1.AuthMode.PRIVATE


def test_a_default_app_translates_to_the_default_spec(
    default_host: dict[str, Any], default_spec: v1alpha1.FalAppSpec
) -> None:
    translated = fal_options.spec_from_fal_options(
        app="app.py::NothingSet", host=default_host, app_auth=None
    )
    assert translated == default_spec


def test_health_check_defaults_follow_fals_documented_values() -> None:
    class WithHealthCheck(fal.App):  # type: ignore[no-untyped-call]
        @fal.endpoint("/")
        def run(self) -> dict[str, str]:
            return {}

        @fal.endpoint("/healthz", health_check=fal.HealthCheck())
        def healthz(self) -> dict[str, str]:
            return {}

    host = fal.app.wrap_app(WithHealthCheck).options.host
    spec = fal_options.spec_from_fal_options(
        app="app.py::WithHealthCheck", host=host, app_auth=None
    )
    assert spec.health_check == v1alpha1.HealthCheckSpec(
        path="/healthz",
        method=v1alpha1.HealthCheckMethod.POST,
        start_period_seconds=30,
        timeout_seconds=5,
        failure_threshold=3,
        call_regularly=True,
    )
