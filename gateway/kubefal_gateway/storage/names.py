"""Names that reach the object store: namespaces, object ids, file names and upload ids.

Every one of them comes from a caller (a header, a JSON body or a URL path), and every one ends
up as a path segment on local disk or an S3 key, so each is checked against a strict pattern
here and nowhere else. A caller's file name is *sanitized* (it is cosmetic: directories, control
characters and anything outside `[A-Za-z0-9._-]` go); a name read back from a URL path is
*validated* (a URL the gateway did not issue is refused, never rewritten).
"""

from __future__ import annotations

import re
import secrets

from kubefal_api import apikeys

MAX_NAME_CHARS = 128
DEFAULT_NAME = "upload.bin"

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(;[ -~]{0,200})?")


class InvalidName(ValueError):
    """A name, id or namespace that does not match its pattern."""


def new_id() -> str:
    """A random, unguessable object or upload id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def sanitize_file_name(raw: str | None, *, default: str = DEFAULT_NAME) -> str:
    """A caller's file name reduced to a safe single path segment: `../../etc/passwd` →
    `passwd`, `a b?.png` → `a_b_.png`, empty or all-dots → `default`."""
    if not raw:
        return default
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE.sub("_", base).lstrip(".")
    if len(cleaned) > MAX_NAME_CHARS:
        stem, dot, suffix = cleaned.rpartition(".")
        if dot and 0 < len(suffix) <= 16:
            cleaned = stem[: MAX_NAME_CHARS - len(suffix) - 1] + "." + suffix
        else:
            cleaned = cleaned[:MAX_NAME_CHARS]
    return cleaned if _NAME.fullmatch(cleaned) else default


def check_file_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidName(f"invalid file name {name[:80]!r}")
    return name


def check_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise InvalidName(f"invalid id {value[:80]!r}")
    return value


def check_namespace(namespace: str) -> str:
    if not apikeys.is_valid_namespace(namespace):
        raise InvalidName(f"invalid namespace {namespace[:80]!r}")
    return namespace


def content_type(raw: str | None) -> str:
    """A `type/subtype[; params]` content type, or `application/octet-stream`."""
    if raw and _CONTENT_TYPE.fullmatch(raw.strip()):
        return raw.strip()
    return "application/octet-stream"


def object_key(namespace: str, object_id: str, name: str) -> str:
    """The backend key of a stored file: `<namespace>/<id>/<name>`, each part validated."""
    return f"{check_namespace(namespace)}/{check_id(object_id)}/{check_file_name(name)}"
