"""Runner settings from flags and the operator's environment variables (pure logic, no processes).

We test these aspects: defaults; environment variables; flags winning over the environment;
the three requirement formats (lines, JSON list, JSON list of lists); unusable values rejected with
a message naming the setting.
"""

from __future__ import annotations

import pathlib

import pytest

from kubefal_runner import settings


def test_defaults_need_only_the_app() -> None:
    loaded = settings.load_settings(
        argv=["--app", "app.py::MyApp"], environ={"HOME": "/home/runner"}
    )

    assert loaded.app_ref == "app.py::MyApp"
    assert (loaded.host, loaded.port, loaded.metrics_port) == ("0.0.0.0", 8080, 9090)
    assert loaded.max_multiplexing is None
    assert loaded.requirement_layers == ()
    assert loaded.drain_timeout_seconds == 25.0
    assert loaded.tls_cert is None


def test_environment_configures_everything_and_flags_win() -> None:
    environ = {
        "KUBEFAL_RUNNER_APP": "pkg.module::MyApp",
        "KUBEFAL_RUNNER_PORT": "7000",
        "KUBEFAL_RUNNER_METRICS_PORT": "0",
        "KUBEFAL_RUNNER_HOST": "127.0.0.1",
        "KUBEFAL_MAX_MULTIPLEXING": "4",
        "KUBEFAL_REQUIREMENTS": "numpy==2.0\n# a comment\n\nscipy",
        "KUBEFAL_REQUIREMENTS_CACHE": "/cache/venvs",
        "KUBEFAL_DRAIN_TIMEOUT": "12.5",
    }

    from_environment = settings.load_settings(argv=[], environ=environ)
    with_flags = settings.load_settings(
        argv=["--port", "7100", "--max-multiplexing", "2"], environ=environ
    )

    assert from_environment.app_ref == "pkg.module::MyApp"
    assert (from_environment.host, from_environment.port) == ("127.0.0.1", 7000)
    assert from_environment.metrics_port == 0
    assert from_environment.max_multiplexing == 4
    assert from_environment.requirement_layers == (("numpy==2.0", "scipy"),)
    assert from_environment.requirements_cache == pathlib.Path("/cache/venvs")
    assert from_environment.drain_timeout_seconds == 12.5
    assert (with_flags.port, with_flags.max_multiplexing) == (7100, 2)


@pytest.mark.parametrize(
    ("text", "layers"),
    [
        ('["torch==2.5", "diffusers"]', (("torch==2.5", "diffusers"),)),
        (
            '[["torch==2.5"], ["diffusers", "accelerate"]]',
            (("torch==2.5",), ("diffusers", "accelerate")),
        ),
        ("  ", ()),
        ("[]", ()),
    ],
)
def test_requirements_accept_json_lists_and_layers(
    text: str, layers: tuple[tuple[str, ...], ...]
) -> None:
    assert settings.parse_requirements(text) == layers


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        ([], {}, "no app given"),
        (["--app", "app.py"], {}, "must look like file.py::Class"),
        (["--app", "a.py::A"], {"KUBEFAL_RUNNER_PORT": "http"}, "KUBEFAL_RUNNER_PORT"),
        (["--app", "a.py::A"], {"KUBEFAL_MAX_MULTIPLEXING": "0"}, "at least 1"),
        (["--app", "a.py::A"], {"KUBEFAL_DRAIN_TIMEOUT": "soon"}, "KUBEFAL_DRAIN_TIMEOUT"),
        (["--app", "a.py::A", "--tls-cert", "c.pem"], {}, "both a certificate and a key"),
        (["--app", "a.py::A"], {"KUBEFAL_REQUIREMENTS": "[1, 2]"}, "list of strings"),
        (["--app", "a.py::A", "--port", "70000"], {}, "outside 0..65535"),
    ],
)
def test_unusable_settings_are_rejected_with_the_setting_named(
    argv: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(settings.SettingsError, match=message):
        settings.load_settings(argv=argv, environ=environ)


def test_the_falapp_health_check_is_read_from_its_json() -> None:
    loaded = settings.load_settings(
        argv=["--app", "app.py::MyApp"],
        environ={
            "KUBEFAL_HEALTH_CHECK": '{"path": "/healthz", "method": "GET", "timeoutSeconds": 3,'
            ' "failureThreshold": 2, "callRegularly": false}'
        },
    )

    assert loaded.health_check == {
        "path": "/healthz",
        "method": "GET",
        "timeout_seconds": 3,
        "failure_threshold": 2,
        "call_regularly": False,
    }
    for bad in ("{", '{"method": "GET"}', "[1]"):
        with pytest.raises(settings.SettingsError, match="KUBEFAL_HEALTH_CHECK"):
            settings.load_settings(
                argv=["--app", "app.py::MyApp"], environ={"KUBEFAL_HEALTH_CHECK": bad}
            )


def test_the_head_limits_come_from_the_environment_or_flags_and_must_be_positive() -> None:
    app = ["--app", "a.py::A"]
    defaults = settings.load_settings(argv=app, environ={})
    configured = settings.load_settings(
        argv=[*app, "--max-headers", "7"],
        environ={"KUBEFAL_RUNNER_MAX_HEADER_BYTES": "2048", "KUBEFAL_RUNNER_MAX_HEADERS": "9"},
    )

    assert (defaults.max_header_bytes, defaults.max_headers) == (128 * 1024, 256)
    assert (configured.max_header_bytes, configured.max_headers) == (2048, 7)
    with pytest.raises(settings.SettingsError, match="max header bytes"):
        settings.load_settings(argv=[*app, "--max-header-bytes", "0"], environ={})
    with pytest.raises(settings.SettingsError, match="KUBEFAL_RUNNER_MAX_HEADERS"):
        settings.load_settings(argv=app, environ={"KUBEFAL_RUNNER_MAX_HEADERS": "many"})
