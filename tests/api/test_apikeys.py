"""Behaviour of the API key format, hashing and Secret layout shared by the gateway and CLI."""

from __future__ import annotations

import base64
import dataclasses
import datetime

import hypothesis
import hypothesis.strategies as st
import pytest

from kubefal_api import apikeys


def test_generated_key_round_trips_through_its_string_form() -> None:
    key = apikeys.generate_key()

    assert apikeys.parse_key(str(key)) == key
    assert apikeys.is_valid_key_id(key.id)
    assert len(key.secret) >= 43


def test_generated_keys_are_unique() -> None:
    keys = {str(apikeys.generate_key()) for _ in range(200)}

    assert len(keys) == 200


def test_repr_of_a_key_never_shows_the_secret() -> None:
    key = apikeys.generate_key()

    assert key.secret not in repr(key)


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("no-colon-here", "no ':'"),
        ("kf0123456789abcdef:", "secret"),
        ("KF0123456789ABCDEF:abc", "key id"),
        ("kf0123:abc", "key id"),
        ("kf0123456789abcdef:has space", "secret"),
        ("kf0123456789abcdef:" + "a" * 300, "secret"),
    ],
)
def test_malformed_keys_are_rejected_with_the_reason(raw: str, complaint: str) -> None:
    with pytest.raises(apikeys.InvalidApiKeyError, match=complaint):
        apikeys.parse_key(raw)


def test_authorization_header_with_the_key_scheme_yields_the_key() -> None:
    key = apikeys.generate_key()

    assert apikeys.parse_authorization(f"Key {key}") == key


@pytest.mark.parametrize("header", ["Bearer abc", "Key ", "kf0123456789abcdef:abc", ""])
def test_authorization_header_without_the_key_scheme_is_rejected(header: str) -> None:
    with pytest.raises(apikeys.InvalidApiKeyError):
        apikeys.parse_authorization(header)


@hypothesis.given(raw=st.text(max_size=400))
@hypothesis.settings(max_examples=300, deadline=None)
def test_parsing_arbitrary_text_either_succeeds_or_raises_invalid_key(raw: str) -> None:
    try:
        key = apikeys.parse_key(raw)
    except apikeys.InvalidApiKeyError:
        return
    assert str(key) == raw.strip()


def test_hash_verifies_the_right_secret_and_rejects_another() -> None:
    encoded = apikeys.hash_secret("right-secret")

    assert encoded.startswith("scrypt$")
    assert "right-secret" not in encoded
    assert apikeys.verify_secret(secret="right-secret", encoded_hash=encoded)
    assert not apikeys.verify_secret(secret="wrong-secret", encoded_hash=encoded)


def test_each_hash_has_its_own_salt() -> None:
    assert apikeys.hash_secret("same") != apikeys.hash_secret("same")


def test_pbkdf2_hashes_verify_too() -> None:
    encoded = apikeys.hash_secret_pbkdf2("s3cret", iterations=1000)

    assert encoded.startswith("pbkdf2_sha256$1000$")
    assert apikeys.verify_secret(secret="s3cret", encoded_hash=encoded)
    assert not apikeys.verify_secret(secret="s3cret!", encoded_hash=encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain",
        "md5$abc$def",
        "scrypt$16384$8$1$salt",
        "scrypt$notanumber$8$1$c2FsdA$aGFzaA",
        "scrypt$1000$8$1$c2FsdA$aGFzaA",
        "scrypt$1073741824$8$1$c2FsdA$aGFzaA",
        "scrypt$16384$8$1$c2FsdA$dG9vLXNob3J0",
        "pbkdf2_sha256$0$c2FsdA$aGFzaA",
        "pbkdf2_sha256$1000$!!!$***",
    ],
)
def test_malformed_or_hostile_hashes_never_verify(encoded: str) -> None:
    assert not apikeys.verify_secret(secret="anything", encoded_hash=encoded)


def test_tampering_with_the_stored_hash_breaks_verification() -> None:
    encoded = apikeys.hash_secret("s")
    prefix, _, digest = encoded.rpartition("$")
    flipped = ("B" if digest[0] == "A" else "A") + digest[1:]

    assert not apikeys.verify_secret(secret="s", encoded_hash=f"{prefix}${flipped}")


def _record(
    *, namespaces: list[str], revoked: bool = False
) -> tuple[apikeys.ApiKey, apikeys.KeyRecord]:
    key = apikeys.generate_key()
    record = apikeys.new_record(key=key, namespaces=namespaces, description="ci key")
    if revoked:
        record = dataclasses.replace(record, revoked=True)
    return key, record


def test_secret_manifest_follows_the_documented_layout_and_holds_no_secret() -> None:
    key, record = _record(namespaces=["team-b", "team-a"])

    manifest = apikeys.secret_manifest(record, namespace="kubefal-system")

    assert manifest["metadata"]["name"] == f"kubefal-key-{key.id}"
    assert manifest["metadata"]["namespace"] == "kubefal-system"
    assert manifest["metadata"]["labels"]["kubefal.io/api-key"] == "true"
    assert set(manifest["stringData"]) == {
        "id",
        "hash",
        "namespaces",
        "description",
        "created",
        "revoked",
    }
    assert manifest["stringData"]["namespaces"] == "team-a,team-b"
    assert manifest["stringData"]["revoked"] == "false"
    assert key.secret not in repr(manifest)


def test_record_reads_back_from_the_base64_data_the_api_server_returns() -> None:
    key, record = _record(namespaces=["team-a"])
    string_data = apikeys.secret_manifest(record, namespace="ns")["stringData"]
    as_returned = {
        "data": {
            name: base64.b64encode(value.encode()).decode() for name, value in string_data.items()
        }
    }

    assert apikeys.record_from_secret(as_returned) == record
    assert record.check(secret=key.secret, namespace="team-a") is apikeys.KeyVerdict.OK


def test_key_check_reports_wrong_secret_before_scope_or_revocation() -> None:
    key, record = _record(namespaces=["team-a"], revoked=True)

    verdict = record.check(secret=key.secret + "x", namespace="team-b")

    assert verdict is apikeys.KeyVerdict.WRONG_SECRET


def test_revoked_key_is_refused_even_with_the_right_secret() -> None:
    key, record = _record(namespaces=["team-a"], revoked=True)

    assert record.check(secret=key.secret, namespace="team-a") is apikeys.KeyVerdict.REVOKED


def test_key_scoped_to_one_namespace_is_refused_in_another() -> None:
    key, record = _record(namespaces=["team-a"])

    verdict = record.check(secret=key.secret, namespace="team-b")

    assert verdict is apikeys.KeyVerdict.NAMESPACE_NOT_ALLOWED


def test_key_for_all_namespaces_is_accepted_everywhere() -> None:
    key, record = _record(namespaces=["team-a", "*"])

    assert record.namespaces == ("*",)
    assert record.check(secret=key.secret, namespace="anything") is apikeys.KeyVerdict.OK


@pytest.mark.parametrize("namespaces", [[], ["Team_A"], ["-leading"], ["a" * 64]])
def test_invalid_namespace_scopes_are_rejected(namespaces: list[str]) -> None:
    with pytest.raises(apikeys.InvalidKeyRecordError):
        apikeys.new_record(key=apikeys.generate_key(), namespaces=namespaces)


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"hash": "x", "namespaces": "a"}, "missing"),
        ({"id": "bad", "hash": "x", "namespaces": "a"}, "not a kubefal key id"),
        (
            {"id": "kf0123456789abcdef", "hash": "x", "namespaces": "a", "created": "yesterday"},
            "RFC 3339",
        ),
        ({"id": "kf0123456789abcdef", "hash": "x", "namespaces": " , "}, "at least one namespace"),
        ({"id": "kf0123456789abcdef", "hash": "x", "namespaces": "a,Team_B"}, "not a valid"),
    ],
)
def test_malformed_secrets_are_reported(fields: dict[str, str], complaint: str) -> None:
    with pytest.raises(apikeys.InvalidKeyRecordError, match=complaint):
        apikeys.record_from_secret({"stringData": fields})


def test_record_without_created_or_revoked_fields_defaults_to_epoch_and_active() -> None:
    record = apikeys.record_from_fields(
        {"id": "kf0123456789abcdef", "hash": "h", "namespaces": "a, b"}
    )

    assert record.namespaces == ("a", "b")
    assert not record.revoked
    assert record.created == datetime.datetime.fromtimestamp(0, tz=datetime.UTC)


# ---- scopes ------------------------------------------------------------------------------------
def test_a_key_without_scopes_may_do_everything_and_writes_no_scopes_field() -> None:
    record = apikeys.new_record(key=apikeys.generate_key(), namespaces=["team"])
    assert record.scopes == (apikeys.ALL_SCOPES,)
    assert record.allows_scope(apikeys.SCOPE_APPS) and record.allows_scope(apikeys.SCOPE_STORAGE)
    assert apikeys.FIELD_SCOPES not in apikeys.string_data(record)
    # a Secret written before scopes existed reads back as every scope
    fields = apikeys.string_data(record)
    assert apikeys.record_from_fields(fields).scopes == (apikeys.ALL_SCOPES,)


def test_a_storage_only_key_round_trips_and_may_not_call_apps() -> None:
    record = apikeys.new_record(
        key=apikeys.generate_key(), namespaces=["team"], scopes=[apikeys.SCOPE_STORAGE]
    )
    stored = apikeys.string_data(record)
    assert stored[apikeys.FIELD_SCOPES] == "storage"
    read = apikeys.record_from_secret({"stringData": stored})
    assert read.scopes == ("storage",)
    assert read.allows_scope(apikeys.SCOPE_STORAGE)
    assert not read.allows_scope(apikeys.SCOPE_APPS)


def test_scopes_are_validated_on_write_and_unknown_ones_grant_nothing_on_read() -> None:
    with pytest.raises(apikeys.InvalidKeyRecordError, match="unknown scope"):
        apikeys.new_record(key=apikeys.generate_key(), namespaces=["a"], scopes=["admin"])
    with pytest.raises(apikeys.InvalidKeyRecordError, match="at least one scope"):
        apikeys.new_record(key=apikeys.generate_key(), namespaces=["a"], scopes=[])
    assert apikeys.parse_scopes("apps, storage") == ("apps", "storage")
    assert apikeys.parse_scopes("*") == (apikeys.ALL_SCOPES,)
    assert apikeys.parse_scopes("") == (apikeys.ALL_SCOPES,)
    # a hand-edited Secret naming only scopes kubefal does not know may do nothing at all
    fields = apikeys.string_data(apikeys.new_record(key=apikeys.generate_key(), namespaces=["a"]))
    fields[apikeys.FIELD_SCOPES] = "admin"
    record = apikeys.record_from_fields(fields)
    assert record.scopes == ()
    assert not record.allows_scope(apikeys.SCOPE_APPS)
    assert not record.allows_scope(apikeys.SCOPE_STORAGE)
