"""The files `kubefal run` shares with its control plane (kubefal_api/localrun.py): keys keep
only hashes and survive a round trip, fal secrets become environment variables, and what does
not parse is left out instead of failing the run."""

from __future__ import annotations

import base64
import json
import pathlib

import pytest

from kubefal_api import apikeys, localrun


def test_keys_round_trip_with_hashes_only(tmp_path: pathlib.Path) -> None:
    key = apikeys.generate_key()
    record = apikeys.new_record(key=key, namespaces=["local"], description="ci")
    path = tmp_path / localrun.KEYS

    localrun.save_keys(path, [record])

    assert localrun.load_keys(path) == [record]
    assert key.secret not in path.read_text()
    assert path.stat().st_mode & 0o077 == 0
    assert localrun.gateway_key_entry(record) == {
        "id": record.id,
        "hash": record.hash,
        "namespaces": "local",
        "revoked": False,
    }


def test_a_restricted_keys_scopes_reach_the_gateway_config(tmp_path: pathlib.Path) -> None:
    record = apikeys.new_record(
        key=apikeys.generate_key(), namespaces=["local"], scopes=[apikeys.SCOPE_STORAGE]
    )
    path = tmp_path / localrun.KEYS

    localrun.save_keys(path, [record])

    assert localrun.load_keys(path)[0].scopes == (apikeys.SCOPE_STORAGE,)
    assert localrun.gateway_key_entry(record)["scopes"] == [apikeys.SCOPE_STORAGE]


def test_a_malformed_key_entry_is_left_out(tmp_path: pathlib.Path) -> None:
    good = apikeys.new_record(key=apikeys.generate_key(), namespaces=["local"])
    path = tmp_path / localrun.KEYS
    path.write_text(json.dumps({"keys": [{"id": "nope"}, apikeys.string_data(good), 7]}))

    assert localrun.load_keys(path) == [good]
    assert localrun.load_keys(tmp_path / "missing.json") == []


def test_fal_secrets_become_environment_variables(tmp_path: pathlib.Path) -> None:
    path = tmp_path / localrun.SECRETS
    encoded = base64.b64encode("hunter2 ✓".encode()).decode()
    localrun.write_json(
        path, {"data": {"TOKEN": encoded, "BROKEN": "%%%", "NUMBER": 3}, "metadata": {}}
    )

    assert localrun.secret_environment(path) == {"TOKEN": "hunter2 ✓"}
    assert localrun.secret_environment(tmp_path / "none.json") == {}


def test_an_oversized_shared_file_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / localrun.SECRETS
    path.write_bytes(b" " * (localrun.MAX_FILE_BYTES + 1))

    with pytest.raises(ValueError, match="larger than"):
        localrun.read_json(path)


def test_run_state_names_the_field_it_misses() -> None:
    with pytest.raises(ValueError, match="gateway_pid"):
        localrun.RunState.from_json({"app_id": "local/a", "gateway_config": "/g"})
