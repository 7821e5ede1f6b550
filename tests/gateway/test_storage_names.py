"""Pure logic of the storage service: caller file names, URL signatures, tokens, /data paths."""

from __future__ import annotations

import pytest

from kubefal_gateway.storage import core, datafiles, names, signing

SIGNER = signing.Signer(b"unit-test-signing-key-0123456789")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32", "system32"),
        ("a b?.png", "a_b_.png"),
        ("...", "upload.bin"),
        ("", "upload.bin"),
        (None, "upload.bin"),
        (".bashrc", "bashrc"),
        ("x" * 300 + ".safetensors", "x" * (128 - 12) + ".safetensors"),
        ("ünïcode.txt", "_n_code.txt"),
    ],
)
def test_caller_file_names_become_one_safe_segment(raw: str | None, expected: str) -> None:
    assert names.sanitize_file_name(raw) == expected


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", ".hidden", "x" * 129, "a\x00b"])
def test_names_read_from_urls_are_validated_not_rewritten(name: str) -> None:
    with pytest.raises(names.InvalidName):
        names.check_file_name(name)


def test_a_file_token_covers_namespace_id_name_and_expiry() -> None:
    token = SIGNER.file_token("team", "a" * 22, "x.png", expires=2_000_000_000)
    assert SIGNER.check_file_token(token, "team", "a" * 22, "x.png", now=1) == 2_000_000_000
    for namespace, object_id, name in (
        ("other", "a" * 22, "x.png"),
        ("team", "b" * 22, "x.png"),
        ("team", "a" * 22, "y.png"),
    ):
        with pytest.raises(signing.BadSignature):
            SIGNER.check_file_token(token, namespace, object_id, name, now=1)
    later = token.replace("2000000000", "2000000001")
    with pytest.raises(signing.BadSignature):
        SIGNER.check_file_token(later, "team", "a" * 22, "x.png", now=1)
    with pytest.raises(signing.Expired):
        SIGNER.check_file_token(token, "team", "a" * 22, "x.png", now=2_000_000_000)
    never = SIGNER.file_token("team", "a" * 22, "x.png", expires=0)
    assert SIGNER.check_file_token(never, "team", "a" * 22, "x.png", now=9e12) == 0


def test_tokens_of_another_key_or_kind_do_not_verify() -> None:
    other = signing.Signer(b"another-signing-key-0123456789ab")
    cdn = SIGNER.cdn_token("kf0123", "team", expires=2_000_000_000)
    assert SIGNER.check_cdn_token(cdn, now=1).namespace == "team"
    with pytest.raises(signing.BadSignature):
        other.check_cdn_token(cdn, now=1)
    realtime = SIGNER.realtime_token("kf0123", ("files",), expires=2_000_000_000)
    assert SIGNER.check_realtime_token(realtime, now=1).apps == ("files",)
    with pytest.raises(signing.BadSignature):
        SIGNER.check_cdn_token(realtime, now=1)
    with pytest.raises(signing.BadSignature):
        SIGNER.check_realtime_token(realtime.replace(".files.", ".admin."), now=1)
    with pytest.raises(ValueError):
        SIGNER.realtime_token("kf0123", ("Not.An.App",), expires=1)


@pytest.mark.parametrize(
    ("raw", "parts"),
    [
        ("/data/a/b", ["a", "b"]),
        ("data/a", ["a"]),
        ("/data", []),
        ("a//b/", ["a", "b"]),
        ("sync/dir", ["sync", "dir"]),
    ],
)
def test_data_paths_are_relative_to_data(raw: str, parts: list[str]) -> None:
    assert datafiles.relative_parts(raw) == parts


@pytest.mark.parametrize("raw", ["/data/../x", "a/./b", "a\\b", "a\x00b", "x" * 1025])
def test_unsafe_data_paths_are_refused(raw: str) -> None:
    with pytest.raises(datafiles.DataInvalid):
        datafiles.relative_parts(raw)


@pytest.mark.parametrize("seconds", [core.MAX_LIFETIME_SECONDS + 1, 10**400])
def test_lifecycle_past_the_limit_is_invalid_not_an_overflow(seconds: int) -> None:
    raw = f'{{"expiration_duration_seconds": {seconds}}}'
    with pytest.raises(core.Invalid, match="at most"):
        core.parse_lifecycle(raw)
    assert core.parse_lifecycle('{"expiration_duration_seconds": 3600}') == 3600.0
