"""fal's ``/users/current`` answer for a key (the fal CLI's ``--team`` check): the team is the
key's namespace when it has exactly one."""

from __future__ import annotations

import pytest

from kubefal_api import apikeys


@pytest.mark.parametrize(
    ("namespaces", "team_is_namespace"),
    [(["team-a"], True), (["team-a", "team-b"], False), (["*"], False)],
)
def test_the_team_of_a_key_is_its_one_namespace(
    namespaces: list[str], team_is_namespace: bool
) -> None:
    key = apikeys.generate_key()
    record = apikeys.new_record(key=key, namespaces=namespaces, description="t")

    account = record.fal_account()

    assert account["user_id"] == key.id
    assert account["nickname"] == ("team-a" if team_is_namespace else key.id)
    assert key.secret not in str(account) and record.hash not in str(account)
