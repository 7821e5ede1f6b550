"""Finding one file field in a multipart/form-data body, for fal's two form uploads.

fal's SDK sends an app file's part (``/files/app/multipart/...``) and a ``/data`` upload part as
a form with one file field; the app-file route holds the body in memory, the ``/data`` route
has it on disk (read through ``mmap``). Both look for the field the same way, so the rules (the
boundary parameter, at most 16 KiB of part headers, the part ends at the next delimiter) are
here once; each caller turns "not a form" and "no such field" into its own error.
"""

from __future__ import annotations

import mmap
import re

MAX_BOUNDARY_CHARS = 200
MAX_PART_HEADER_BYTES = 16384


def delimiter(content_type: str) -> bytes | None:
    """``--<boundary>`` of a multipart/form-data content type; None when the type is another,
    or its boundary is missing or longer than ``MAX_BOUNDARY_CHARS``."""
    boundary = ""
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    if not 0 < len(boundary) < MAX_BOUNDARY_CHARS:
        return None
    return b"--" + boundary.encode("latin-1")


def field_range(body: bytes | mmap.mmap, delimiter: bytes, field: str) -> tuple[int, int] | None:
    """The byte range (start, end) of the content of the part named ``field``; None when the
    body has no such complete part."""
    position = body.find(delimiter)
    while position != -1:
        headers_start = position + len(delimiter) + 2
        headers_end = body.find(b"\r\n\r\n", headers_start, headers_start + MAX_PART_HEADER_BYTES)
        if headers_end == -1:
            break
        headers = body[headers_start:headers_end].decode("latin-1").lower()
        content_start = headers_end + 4
        following = body.find(b"\r\n" + delimiter, content_start)
        if following == -1:
            break
        # The `name` parameter itself: `filename="<field>"` also contains `name="<field>"`.
        if re.search(rf'(?:^|[;\s])name="{re.escape(field)}"', headers):
            return content_start, following
        position = following + 2
    return None
