"""The gateway's flags and KUBEFAL_GATEWAY_* variables on the shared loader
(kubefal_api.process_settings): precedence, help text, errors that say where a value came from."""

from __future__ import annotations

import pytest

from kubefal_gateway import settings

LOCAL = ["--static-config", "apps.yaml"]


def test_a_flag_wins_over_its_variable_which_wins_over_the_default() -> None:
    loaded = settings.load(
        [*LOCAL, "--queue-port", "9443"],
        environ={"KUBEFAL_GATEWAY_QUEUE_PORT": "1", "KUBEFAL_GATEWAY_RESULT_TTL": "60"},
    )
    assert (loaded.queue_port, loaded.result_ttl, loaded.run_port) == (9443, 60.0, 8444)


def test_a_boolean_flag_alone_turns_it_on_and_takes_a_value_too() -> None:
    assert settings.load([*LOCAL, "--admin-token-metrics"], environ={}).admin_token_metrics
    assert not settings.load(
        [*LOCAL, "--admin-token-metrics", "false"],
        environ={"KUBEFAL_GATEWAY_ADMIN_TOKEN_METRICS": "true"},
    ).admin_token_metrics


def test_a_bad_variable_names_the_variable_its_flag_and_the_setting() -> None:
    with pytest.raises(SystemExit) as refused:
        settings.load(LOCAL, environ={"KUBEFAL_GATEWAY_MAX_REQUEST_BYTES": "32MB"})
    message = str(refused.value)
    assert "KUBEFAL_GATEWAY_MAX_REQUEST_BYTES='32MB'" in message
    assert "--max-request-bytes" in message
    assert "Largest accepted request body" in message


def test_help_is_each_fields_description_with_its_variable_and_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    text = " ".join(settings.build_parser().format_help().split())
    assert (
        "--lease-seconds NUMBER A dispatched queued job is leased for this long and renewed "
        "while it runs"
    ) in text
    assert "[env KUBEFAL_GATEWAY_LEASE_SECONDS; default 30.0]" in text
    for name, field in settings.Settings.model_fields.items():
        assert field.description, name
        assert f"[env {settings.ENV_PREFIX}{name.upper()};" in text


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        ([], {"KUBEFAL_GATEWAY_MAX_HEADERS": "0"}, "KUBEFAL_GATEWAY_MAX_HEADERS='0'"),
        (["--idle-timeout", "0"], {}, "--idle-timeout='0'"),
        (["--status-hold-seconds", "11"], {}, "--status-hold-seconds='11'"),
        ([], {"KUBEFAL_GATEWAY_EVENT_LOOP": "trio"}, "KUBEFAL_GATEWAY_EVENT_LOOP='trio'"),
    ],
)
def test_limits_out_of_range_are_refused_naming_where_the_value_came_from(
    argv: list[str], environ: dict[str, str], named: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        settings.load([*LOCAL, *argv], environ=environ)
    assert named in str(refused.value)
