"""``kubefal render``: the deploy manifests as commented YAML for people and Git.

The values come from :mod:`kubefal_cli.manifests` (the very dicts ``kubefal deploy`` applies); the
jinja2 template ``templates/falapp.yaml.j2`` only lays them out and explains each field and the
fal attribute it comes from. Scalars are written as plain YAML when unambiguous and double-quoted
when it cannot be plain; file contents as literal blocks when that round-trips exactly.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from typing import Any

import jinja2

from kubefal_cli import appref

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./:@+-]*$")
_RESERVED = re.compile(r"^(?:y|n|yes|no|true|false|on|off|null|~)$", re.IGNORECASE)


def _is_plain_printable(character: str) -> bool:
    code = ord(character)
    return (
        0x20 <= code <= 0x7E
        or 0xA0 <= code <= 0xD7FF
        or (0xE000 <= code <= 0xFFFD and code != 0xFEFF)
        or 0x10000 <= code <= 0x10FFFF
    )


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def yaml_quoted(text: str) -> str:
    """A YAML double-quoted scalar; anything outside YAML's printable set is escaped."""
    parts: list[str] = []
    for character in text:
        if character in _ESCAPES:
            parts.append(_ESCAPES[character])
        elif _is_plain_printable(character):
            parts.append(character)
        elif ord(character) <= 0xFF:
            parts.append(f"\\x{ord(character):02x}")
        elif ord(character) <= 0xFFFF:
            parts.append(f"\\u{ord(character):04x}")
        else:
            parts.append(f"\\U{ord(character):08x}")
    return '"' + "".join(parts) + '"'


def yaml_scalar(value: Any) -> str:
    """One value as flow YAML: plain when safe, else quoted; lists and maps in flow style."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        plain = _PLAIN.fullmatch(value) and not _RESERVED.fullmatch(value) and ": " not in value
        return value if plain else yaml_quoted(value)
    if isinstance(value, list):
        return "[" + ", ".join(yaml_scalar(item) for item in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{yaml_scalar(k)}: {yaml_scalar(v)}" for k, v in value.items()) + "}"
        )
    return yaml_quoted(str(value))


def _is_block_safe(character: str) -> bool:
    return character in "\t\n" or _is_plain_printable(character)


def yaml_text_block(text: str, *, indent: int) -> str:
    """A file's text as a literal block scalar indented by ``indent``, or JSON when it must be."""
    first_content = next((line for line in text.split("\n") if line), "")
    if not text or "\r" in text or not all(map(_is_block_safe, text)):
        return yaml_quoted(text)
    if not first_content or first_content[:1] in (" ", "\t"):
        return yaml_quoted(text)
    if any(line != line.rstrip(" \t") for line in text.split("\n")):
        return yaml_quoted(text)
    if text.endswith("\n\n"):
        chomping = "+"
    elif text.endswith("\n"):
        chomping = ""
    else:
        chomping = "-"
    pad = " " * indent
    body = text[:-1] if text.endswith("\n") else text
    lines = [pad + line if line else "" for line in body.split("\n")]
    return f"|{chomping}\n" + "\n".join(lines)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.DictLoader(
            {
                "falapp.yaml.j2": importlib.resources.files("kubefal_cli")
                .joinpath("templates", "falapp.yaml.j2")
                .read_text(encoding="utf-8")
            }
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    environment.filters["yaml"] = yaml_scalar
    environment.filters["yaml_block"] = yaml_text_block
    return environment


def render(
    *,
    config: appref.AppConfig,
    objects: list[dict[str, Any]],
    command: str,
) -> str:
    """The commented multi-document YAML for ``objects`` (ConfigMaps if any, then the FalApp)."""
    config_maps = [obj for obj in objects if obj["kind"] == "ConfigMap"]
    falapp = next(obj for obj in objects if obj["kind"] != "ConfigMap")
    return (
        _environment()
        .get_template("falapp.yaml.j2")
        .render(
            config=config,
            command=command,
            config_maps=config_maps,
            falapp=falapp,
            spec=falapp["spec"],
        )
    )
