"""Translate a fal.App's normalised options into a FalApp spec, without importing fal.

``fal.app.wrap_app(MyApp)`` reads a ``fal.App`` class into ``options.host`` (machine type,
GPUs, scaling, timeouts, health check) and ``app_auth``. ``kubefal deploy app.py::MyApp`` and
the tests that keep ``examples/*/falapp.yaml`` in sync with ``app.py`` both need the same
mapping from those options to a :class:`~kubefal_api.v1alpha1.FalAppSpec`; it lives here.
The caller imports fal and passes plain values in, so kubefal_api stays free of the SDK.

Options the SDK leaves unset (``None`` or absent) take the FalApp defaults, which equal the
SDK's (see :mod:`kubefal_api.v1alpha1`). Keys with no FalApp counterpart (``_scheduler``,
``metadata``, ``app_files_ignore``, ...) are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from kubefal_api import v1alpha1

SCALING_OPTIONS: Final[Mapping[str, str]] = {
    "min_concurrency": "min_concurrency",
    "max_concurrency": "max_concurrency",
    "keep_alive": "keep_alive",
    "concurrency_buffer": "concurrency_buffer",
    "concurrency_buffer_perc": "concurrency_buffer_perc",
    "scaling_delay": "scaling_delay",
    "max_multiplexing": "max_multiplexing",
}
"""fal host option -> ScalingSpec attribute."""

_HEALTH_CHECK_ATTRIBUTES: Final = (
    "path",
    "method",
    "start_period_seconds",
    "timeout_seconds",
    "failure_threshold",
    "call_regularly",
)


def _set_options(options: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    return {
        attribute: options[option]
        for option, attribute in names.items()
        if options.get(option) is not None
    }


def _health_check(config: Any) -> v1alpha1.HealthCheckSpec | None:
    """HealthCheckSpec from fal's ApplicationHealthCheckConfig (read by attribute)."""
    if config is None:
        return None
    values = {name: getattr(config, name, None) for name in _HEALTH_CHECK_ATTRIBUTES}
    if isinstance(values["method"], str):
        values["method"] = values["method"].upper()
    return v1alpha1.HealthCheckSpec.model_validate(
        {name: value for name, value in values.items() if value is not None}
    )


def machine_types_of(machine_type: str | Sequence[str] | None) -> list[str]:
    """fal's ``machine_type`` (one string or an ordered list) as FalApp machineTypes."""
    if machine_type is None:
        return [v1alpha1.DEFAULT_MACHINE_TYPE]
    if isinstance(machine_type, str):
        return [machine_type]
    return list(machine_type)


def requirements_of(requirements: Sequence[str] | Sequence[Sequence[str]]) -> list[str]:
    """fal's ``requirements`` (a list, or a list of lists installed layer by layer) as one
    flat list in install order."""
    flat: list[str] = []
    for entry in requirements:
        if isinstance(entry, str):
            flat.append(entry)
        else:
            flat.extend(entry)
    return flat


def spec_from_fal_options(
    *,
    app: str,
    host: Mapping[str, Any],
    app_auth: str | None,
    requirements: Sequence[str] | Sequence[Sequence[str]] = (),
    image: str | None = None,
) -> v1alpha1.FalAppSpec:
    """The FalApp spec equivalent to a fal.App.

    ``app`` is the reference to serve ("app.py::MyApp"); ``host`` is
    ``wrap_app(MyApp).options.host``; ``app_auth`` is ``wrap_app(MyApp).app_auth`` (None means
    private, what ``fal deploy`` uses); ``requirements`` is the class's own ``requirements``
    (not ``options.environment``, which adds the SDK's serving packages); ``image`` is the
    runner image holding the app, when it is not the chart's generic one.
    """
    spec: dict[str, Any] = {
        "app": app,
        "machine_types": machine_types_of(host.get("machine_type")),
        "scaling": v1alpha1.ScalingSpec.model_validate(_set_options(host, SCALING_OPTIONS)),
        "requirements": requirements_of(requirements),
        "auth": app_auth or v1alpha1.AuthMode.PRIVATE,
        **_set_options(
            host,
            {
                "num_gpus": "num_gpus",
                "regions": "regions",
                "request_timeout": "request_timeout",
                "startup_timeout": "startup_timeout",
                "skip_retry_conditions": "skip_retry_conditions",
            },
        ),
    }
    health_check = _health_check(host.get("health_check_config"))
    if health_check is not None:
        spec["health_check"] = health_check
    if image is not None:
        spec["image"] = image
    return v1alpha1.FalAppSpec.model_validate(spec)
