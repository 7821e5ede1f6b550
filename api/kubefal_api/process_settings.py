"""One way for every server process to read its configuration: flags, `KUBEFAL_*` env, defaults.

The gateway, the webhook, the operator and the control plane each declare their settings once,
as a pydantic-settings model whose fields carry the default, the type and the description. This
module turns such a model into

- an argparse parser: one `--kebab-name` flag per field, its help the field's description plus
  its environment variable and default;
- environment variables: `<env_prefix><FIELD_NAME>` (e.g. `KUBEFAL_GATEWAY_QUEUE_PORT`), or the
  name an `Env(...)` marker on the field gives (names the chart already sets);
- one validated, frozen object, with a flag winning over its variable and that over the default;
- errors that name the flag and the variable a bad value came from and say what the setting is,
  raised as `SystemExit` so a process refuses to start with one readable line.

Only server processes import it: the runner, which runs in every user image, stays free of
pydantic-settings (an import-linter contract says so).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import pydantic
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


@dataclasses.dataclass(frozen=True)
class Env:
    """Field marker: read this environment variable instead of `<env_prefix><FIELD_NAME>`.

    Use it inside `Annotated[...]` for names that do not follow the process's prefix (names a
    Helm chart already sets, or a variable two processes share).
    """

    name: str


@dataclasses.dataclass(frozen=True)
class Flag:
    """Field marker: the field's flags, instead of `--kebab-name` (flags a chart or a user
    already passes, e.g. `Flag("--liveness")`)."""

    names: tuple[str, ...]

    def __init__(self, *names: str) -> None:
        object.__setattr__(self, "names", names)


class SettingsError(ValueError):
    """A flag or environment variable has a value the process cannot use; the message names
    it and says what the setting is."""


class ProcessSettings(BaseSettings):
    """Base of a process's settings: subclass it, set `env_prefix`, declare the fields.

    `Settings()` (and `Settings(field=value)`) uses the defaults and nothing else; `load()`
    reads flags and the environment. Subclasses put cross-field checks in a
    `model_validator(mode="after")` that raises `ValueError` with a message naming the flags.
    """

    # allow_inf_nan: "inf" would pass a `gt=0` timeout or limit and mean none at all.
    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )

    env_prefix: ClassVar[str] = "KUBEFAL_"
    """Prefix of the environment variable of every field without an `Env` marker."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only keyword arguments: `load` layers flags over an explicit environment itself, so a
        # test's `environ={}` is never mixed with the process's own environment.
        return (init_settings,)

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """The environment variable of one field."""
        for marker in cls.model_fields[field_name].metadata:
            if isinstance(marker, Env):
                return marker.name
        return cls.env_prefix + field_name.upper()

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Every field's environment variable, by field name."""
        return {name: cls.env_name(name) for name in cls.model_fields}

    @classmethod
    def flags(cls, field_name: str) -> tuple[str, ...]:
        """The field's flags: a `Flag` marker's, else `--kebab-name`."""
        for marker in cls.model_fields[field_name].metadata:
            if isinstance(marker, Flag):
                return marker.names
        return ("--" + field_name.replace("_", "-"),)

    @classmethod
    def flag(cls, field_name: str) -> str:
        """The field's (first) flag."""
        return cls.flags(field_name)[-1]

    @classmethod
    def build_parser(
        cls, *, prog: str, description: str | None = None, **kwargs: Any
    ) -> argparse.ArgumentParser:
        """A parser with one flag per field (every flag takes a value; unset flags are None).

        A process may add flags of its own (not settings) to it before calling `load`.
        """
        parser = argparse.ArgumentParser(prog=prog, description=description, **kwargs)
        for name, field in cls.model_fields.items():
            default = field.get_default(call_default_factory=True)
            shown = "unset" if default is None else ("empty" if default == "" else default)
            switch = field.annotation is bool  # `--flag` alone means true; `--flag false` too
            parser.add_argument(
                *cls.flags(name),
                dest=name,
                default=None,
                nargs="?" if switch else None,
                const="true" if switch else None,
                metavar=_metavar(field),
                help=f"{' '.join((field.description or '').split())} "
                f"[env {cls.env_name(name)}; default {shown}]".replace("%", "%%"),
            )
        return parser

    @classmethod
    def load(
        cls,
        argv: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        parser: argparse.ArgumentParser | None = None,
        prog: str | None = None,
        description: str | None = None,
    ) -> Self:
        """The settings from flags, then environment variables, then defaults.

        `parser` (from `build_parser`, maybe with flags of the process's own added) parses
        `argv`; flags that are not fields are ignored here. A bad value ends the process
        (`SystemExit`) with a message naming the flag and the variable.
        """
        if parser is None:
            parser = cls.build_parser(prog=prog or "", description=description)
        try:
            return cls.read(vars(parser.parse_args(argv)), environ)
        except SettingsError as error:
            raise SystemExit(str(error)) from None

    @classmethod
    def read(
        cls, flags: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None
    ) -> Self:
        """The settings from parsed flags (field name to string, None when not given), then
        environment variables, then defaults; `SettingsError` when a value is bad."""
        flags = {} if flags is None else flags
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        origins: dict[str, str] = {}
        for name, field in cls.model_fields.items():
            raw = flags.get(name)
            origin = cls.flag(name)
            if raw is None:
                env = cls.env_name(name)
                raw = environ.get(env)
                origin = env
                if raw == "" and not _keeps_empty(field):
                    raw = None  # an empty variable is an unset one (charts write `value: ""`)
            if raw is None:
                continue
            values[name] = None if raw == "" and _optional(field) else raw
            origins[name] = origin
        try:
            return cls(**values)
        except pydantic.ValidationError as error:
            raise SettingsError(cls._explain(error, values, origins)) from None

    @classmethod
    def _explain(
        cls,
        error: pydantic.ValidationError,
        values: Mapping[str, object],
        origins: Mapping[str, str],
    ) -> str:
        lines = []
        for problem in error.errors(include_url=False):
            location = problem["loc"]
            message = problem["msg"].removeprefix("Value error, ")
            name = location[0] if location else None
            if isinstance(name, str) and name in cls.model_fields:
                field = cls.model_fields[name]
                origin = origins.get(name, cls.flag(name))
                what = " ".join((field.description or "").split()).split(". ")[0]
                lines.append(
                    f"{origin}={values.get(name)!r}: {message}. Set {cls.flag(name)} or "
                    f"{cls.env_name(name)} to a valid value ({what.rstrip('.')})."
                )
            else:
                lines.append(message)
        return "invalid configuration: " + "; ".join(lines)


def _annotation_args(field: FieldInfo) -> tuple[object, ...]:
    annotation = field.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _optional(field: FieldInfo) -> bool:
    return type(None) in _annotation_args(field)


def _keeps_empty(field: FieldInfo) -> bool:
    """A plain `str` setting may be set to the empty string; any other empty value is unset."""
    return field.annotation is str


def _metavar(field: FieldInfo) -> str:
    """What a flag takes, from the field's type: N, NUMBER, BOOL, PATH, one of the choices."""
    kinds = [kind for kind in _annotation_args(field) if kind is not type(None)]
    kind = kinds[0] if len(kinds) == 1 else str
    if typing.get_origin(kind) is typing.Literal:
        return "{" + ",".join(str(choice) for choice in typing.get_args(kind)) + "}"
    names: dict[object, str] = {int: "N", float: "NUMBER", bool: "BOOL"}
    if isinstance(kind, type) and issubclass(kind, os.PathLike):
        return "PATH"
    return names.get(kind, "VALUE")
