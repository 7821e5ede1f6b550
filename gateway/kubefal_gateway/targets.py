"""What of a caller's URL may reach a runner: the checks between a client and a request line.

Why a module of its own: the gateway writes part of each caller's URL (the subpath after
`/{namespace}/{name}` and the query) into the request line it sends over a pooled keep-alive
connection to a runner, and into its `x-fal-endpoint` header. A decoded CR LF there would end the
caller's request early and start a second one on that connection (request smuggling): the runner's
answer to it would then reach whichever caller's request comes next on the connection, with
another key, of another app. A decoded space splits the request line. So:

* the gateway never decodes what it forwards: it forwards the raw, still percent-encoded path
  (ASGI `raw_path`) and query string, after `forward_path` / `forward_query` checked them: only
  RFC 3986 characters (unreserved, sub-delims, `:` `@` `/` and well-formed `%XX` escapes; `?` too
  in a query), and a path that decoded (as the runner decodes it) holds only visible ASCII (no
  control character, no space, no non-ASCII byte); anything else is a 400, an overlong URL a 414;
* `upstream` checks the request line and every header it writes once more (`check_target`), so
  no caller byte reaches a runner unchecked, whatever path it came by (a queued job, a retry);
* the runner's own endpoints live under `RESERVED_PREFIX` (logs, cancel, readiness): a subpath
  whose normalized form starts with it (after decoding, also repeatedly, collapsing `//`, `.`
  and `..`, `\\` as `/`, in any case) is refused with 404, as if it did not exist.
"""

from __future__ import annotations

import re
import urllib.parse

from kubefal_api import naming
from kubefal_gateway import errors

RESERVED_PREFIX = naming.RESERVED_PATH_PREFIX
"""The runner's control endpoints (`/_kubefal/ready`, `/_kubefal/logs/{id}`,
`/_kubefal/cancel/{id}`, ...): only the gateway itself calls them, never a caller."""

DEFAULT_MAX_URL_BYTES = 8192
"""Default of `--max-url-bytes`: longest raw path plus query string the run and queue APIs take."""

_PATH_CHARS = re.compile(rb"[A-Za-z0-9._~!$&'()*+,;=:@/%-]*")
_QUERY_CHARS = re.compile(rb"[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]*")
_TARGET = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/%-]*(?:\?[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*)?")
_MAX_DECODE_ROUNDS = 4
_RESERVED_NAME = RESERVED_PREFIX[1:]


class InvalidTarget(ValueError):
    """A request line the gateway refuses to write to a runner."""


def valid_target(target: str) -> bool:
    """True when `target` is an origin-form path[?query] of RFC 3986 characters only.

    The last check before a request line is written (upstream.py): cheap, and independent of
    where the target came from."""
    return _TARGET.fullmatch(target) is not None


def check_target(target: str) -> None:
    """Raise InvalidTarget unless `valid_target(target)`."""
    if _TARGET.fullmatch(target) is None:
        raise InvalidTarget(f"refusing to send a request for {target[:200]!r} to a runner")


def _decoded_path(raw: bytes) -> bytes:
    """The raw path checked and decoded once, as the runner will see it; BadRequest otherwise."""
    if _PATH_CHARS.fullmatch(raw) is None:
        raise errors.BadRequest(
            "The path may only contain RFC 3986 characters; percent-encode anything else"
        )
    if b"%" not in raw:
        return raw
    if _BAD_ESCAPE.search(raw) is not None:
        raise errors.BadRequest("The path contains a malformed percent-escape")
    decoded = urllib.parse.unquote_to_bytes(raw)
    if _VISIBLE_ASCII.fullmatch(decoded) is None:
        raise errors.BadRequest(
            "The decoded path contains a control character, a space or a non-ASCII byte"
        )
    return decoded


def is_reserved(subpath: str) -> bool:
    """True when `subpath`, normalized as any server on the way might, starts with the prefix."""
    if "%" not in subpath:  # nearly every request: nothing to decode, no backslash possible
        text = subpath.lower()
        if _RESERVED_NAME not in text:
            return False
    else:
        text = subpath
        for _ in range(_MAX_DECODE_ROUNDS):
            if "%" not in text:
                break
            decoded = urllib.parse.unquote(text, errors="replace")
            if decoded == text:
                break
            text = decoded
        text = text.lower().replace("\\", "/")
        if _RESERVED_NAME not in text:
            return False
    segments: list[str] = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return ("/" + "/".join(segments)).startswith(RESERVED_PREFIX)


def forward_path(raw_path: bytes, *, max_url_bytes: int) -> tuple[str, str, str]:
    """`/ns/name[/rest]` (raw, still encoded) → (ns, name, "/rest" still encoded).

    Raises NotFound for a path without an app or under RESERVED_PREFIX, BadRequest for characters
    that must not reach a runner, UriTooLong past `max_url_bytes`."""
    if len(raw_path) > max_url_bytes:
        raise errors.UriTooLong(f"The URL is longer than {max_url_bytes} bytes")
    decoded = _decoded_path(raw_path)
    parts = raw_path.split(b"/", 3)
    if len(parts) < 3 or not parts[1] or not parts[2]:
        raise errors.NotFound(
            f"Path {decoded.decode('ascii')!r} does not name an app: use /<namespace>/<name>/..."
        )
    namespace = parts[1].decode("ascii")
    name = parts[2].decode("ascii")
    if decoded is not raw_path:
        namespace = urllib.parse.unquote(namespace)
        name = urllib.parse.unquote(name)
    subpath = "/" + parts[3].decode("ascii") if len(parts) == 4 else "/"
    if is_reserved(subpath):
        raise errors.NotFound(f"Path {subpath!r} not found")
    return namespace, name, subpath


def forward_query(query: bytes, *, limit: int) -> str:
    """The raw query string, checked (RFC 3986 query characters, well-formed escapes)."""
    if not query:
        return ""
    if len(query) > limit:
        raise errors.UriTooLong(f"The URL is longer than {limit} bytes")
    if _QUERY_CHARS.fullmatch(query) is None or (
        b"%" in query and _BAD_ESCAPE.search(query) is not None
    ):
        raise errors.BadRequest(
            "The query string may only contain RFC 3986 characters and well-formed escapes"
        )
    return query.decode("ascii")


def without_parameter(query: str, name: str) -> str:
    """`query` (raw) without the parameters called `name` (compared decoded), others untouched."""
    if name not in query and "%" not in query:
        return query
    kept = [
        part
        for part in query.split("&")
        if urllib.parse.unquote_plus(part.split("=", 1)[0]) != name
    ]
    return "&".join(kept)
