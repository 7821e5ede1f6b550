"""The shared settings loader (kubefal_api.process_settings): flags, env, help, errors."""

from __future__ import annotations

import pathlib
from typing import Annotated, ClassVar, Literal

import pytest
from pydantic import Field

from kubefal_api.process_settings import Env, ProcessSettings


class Example(ProcessSettings):
    env_prefix: ClassVar[str] = "KUBEFAL_EXAMPLE_"

    queue_port: int = Field(default=8443, ge=0, description="Port of the queue API.")
    ttl: float = Field(
        default=1.5, gt=0, description="Seconds a result stays. Longer is more memory."
    )
    tls_cert: pathlib.Path | None = Field(default=None, description="PEM chain.")
    token: str = Field(default="", description="A bearer token.")
    shared: Annotated[str, Env("KUBEFAL_SHARED_NAME")] = Field(
        default="x", description="Shared name."
    )
    verbose: bool = Field(default=False, description="Say more.")
    mode: Literal["fast", "slow"] = Field(default="fast", description="How to run.")


def test_a_flag_wins_over_its_variable_which_wins_over_the_default() -> None:
    loaded = Example.load(
        ["--queue-port", "9000"],
        environ={"KUBEFAL_EXAMPLE_QUEUE_PORT": "1", "KUBEFAL_EXAMPLE_TTL": "7"},
    )
    assert (loaded.queue_port, loaded.ttl, loaded.mode) == (9000, 7.0, "fast")


def test_a_variable_named_by_an_env_marker_is_read_and_its_prefixed_name_is_not() -> None:
    loaded = Example.load([], environ={"KUBEFAL_SHARED_NAME": "a", "KUBEFAL_EXAMPLE_SHARED": "b"})
    assert loaded.shared == "a"
    assert Example.env_names()["shared"] == "KUBEFAL_SHARED_NAME"
    assert Example.env_names()["queue_port"] == "KUBEFAL_EXAMPLE_QUEUE_PORT"


def test_empty_variables_are_unset_except_for_text_which_may_be_empty() -> None:
    loaded = Example.load(
        [],
        environ={
            "KUBEFAL_EXAMPLE_QUEUE_PORT": "",
            "KUBEFAL_EXAMPLE_TLS_CERT": "",
            "KUBEFAL_SHARED_NAME": "",
        },
    )
    assert (loaded.queue_port, loaded.tls_cert, loaded.shared) == (8443, None, "")
    assert Example.load(["--tls-cert", "/c.pem"], environ={}).tls_cert == pathlib.Path("/c.pem")


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("0", False), ("on", True)])
def test_booleans_read_the_usual_spellings(raw: str, expected: bool) -> None:
    assert Example.load(["--verbose", raw], environ={}).verbose is expected


def test_a_boolean_flag_alone_means_true() -> None:
    assert Example.load(["--verbose", "--queue-port", "1"], environ={}).verbose is True


def test_a_bad_variable_names_the_variable_the_flag_and_what_the_setting_is() -> None:
    with pytest.raises(SystemExit) as exited:
        Example.load([], environ={"KUBEFAL_EXAMPLE_TTL": "soon"})
    message = str(exited.value)
    assert "KUBEFAL_EXAMPLE_TTL='soon'" in message
    assert "--ttl" in message
    assert "Seconds a result stays" in message


@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", "Infinity"])
def test_a_number_that_is_not_finite_is_refused_naming_the_variable(raw: str) -> None:
    """Regression: "inf" passed `gt=0` (a timeout or limit of every component meaning none)."""
    with pytest.raises(SystemExit, match=f"KUBEFAL_EXAMPLE_TTL='{raw}'"):
        Example.load([], environ={"KUBEFAL_EXAMPLE_TTL": raw})


def test_a_bad_flag_is_named_as_the_flag_even_when_the_variable_is_fine() -> None:
    with pytest.raises(SystemExit, match=r"--queue-port='-1': Input should be greater"):
        Example.load(["--queue-port", "-1"], environ={"KUBEFAL_EXAMPLE_QUEUE_PORT": "80"})


def test_help_is_the_field_description_with_its_variable_and_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag: no wrapping at a hyphen
    text = " ".join(Example.build_parser(prog="example").format_help().split())
    assert (
        "--queue-port N Port of the queue API. [env KUBEFAL_EXAMPLE_QUEUE_PORT; default 8443]"
        in text
    )
    assert "--mode {fast,slow}" in text
    assert "--tls-cert PATH PEM chain. [env KUBEFAL_EXAMPLE_TLS_CERT; default unset]" in text


def test_constructed_settings_use_only_defaults_and_are_frozen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBEFAL_EXAMPLE_QUEUE_PORT", "1")
    example = Example()
    assert example.queue_port == 8443
    with pytest.raises(ValueError, match="frozen"):
        example.queue_port = 1
