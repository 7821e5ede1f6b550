"""storage.forms: one file field out of a multipart/form-data body (pure parsing; the upload
routes that use it are tested end to end with fal's SDK in test_storage_app_files.py and
test_storage_data_uploads.py)."""

from __future__ import annotations

import mmap
import pathlib

import pytest

from kubefal_gateway.storage import forms

BODY = (
    b"--XyZ\r\n"
    b'Content-Disposition: form-data; name="other"\r\n\r\n'
    b"ignored\r\n"
    b"--XyZ\r\n"
    b'Content-Disposition: form-data; name="file_upload"; filename="a.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
    b"\x00payload\r\n--\r\n"
    b"\r\n--XyZ--\r\n"
)


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("multipart/form-data; boundary=XyZ", b"--XyZ"),
        ('Multipart/Form-Data; charset=utf-8; boundary="XyZ"', b"--XyZ"),
        ("application/json; boundary=XyZ", None),
        ("multipart/form-data", None),
        ("multipart/form-data; boundary=", None),
        ("multipart/form-data; boundary=" + "x" * forms.MAX_BOUNDARY_CHARS, None),
    ],
)
def test_the_delimiter_comes_from_a_form_content_types_boundary(
    content_type: str, expected: bytes | None
) -> None:
    assert forms.delimiter(content_type) == expected


def test_the_named_fields_content_is_found_in_bytes_and_in_a_mapped_file(
    tmp_path: pathlib.Path,
) -> None:
    start, end = forms.field_range(BODY, b"--XyZ", "file_upload") or (0, 0)
    assert BODY[start:end] == b"\x00payload\r\n--\r\n"
    path = tmp_path / "form"
    path.write_bytes(BODY)
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as body:
        assert forms.field_range(body, b"--XyZ", "file_upload") == (start, end)


def test_a_file_named_like_the_field_is_not_the_field() -> None:
    decoy = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="other"; filename="file_upload"\r\n\r\n'
        b"decoy\r\n"
    )
    body = decoy + BODY
    start, end = forms.field_range(body, b"--XyZ", "file_upload") or (0, 0)
    assert body[start:end] == b"\x00payload\r\n--\r\n"


@pytest.mark.parametrize(
    "body",
    [
        BODY.replace(b'name="file_upload"', b'name="something"'),
        BODY[: BODY.index(b"\x00payload") + 4],  # the part never ends
        b"no delimiter at all",
        # part headers longer than MAX_PART_HEADER_BYTES: not searched further
        BODY.replace(
            b"Content-Type: application/octet-stream",
            b"X-Padding: " + b"p" * forms.MAX_PART_HEADER_BYTES,
        ),
    ],
)
def test_a_body_without_the_complete_field_has_none(body: bytes) -> None:
    assert forms.field_range(body, b"--XyZ", "file_upload") is None
