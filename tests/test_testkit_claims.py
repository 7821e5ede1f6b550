"""testkit.claims: of two sessions that find the same stale claim, exactly one takes it over;
rewrites and releases touch only one's own claim."""

from __future__ import annotations

import pathlib
import threading

from testkit import claims

RACE_WINDOW_SECONDS = 2.0
"""How long the first taker, while judging the stale claim, lets the second one try; with the
lock the second waits that long (and then for the first to finish), without it it wins too."""


def test_two_takers_of_one_stale_claim_do_not_both_win(tmp_path: pathlib.Path) -> None:
    claim = tmp_path / "claim"
    claim.write_text("stale")
    results: dict[str, bool] = {}
    judging, second_started = threading.Event(), threading.Event()

    def second_take() -> None:
        results["second"] = claims.take(claim, "second", stale=lambda text: text == "stale")

    second = threading.Thread(target=second_take)

    def first_judges(text: str) -> bool:
        judging.set()
        assert second_started.wait(timeout=30)
        second.join(timeout=RACE_WINDOW_SECONDS)  # the second taker reads the claim meanwhile
        return text == "stale"

    def first_take() -> None:
        results["first"] = claims.take(claim, "first", stale=first_judges)

    first = threading.Thread(target=first_take)
    first.start()
    assert judging.wait(timeout=30)
    second.start()
    second_started.set()
    first.join(timeout=60)
    second.join(timeout=60)

    assert results == {"first": True, "second": False}
    assert claim.read_text() == "first"


def test_a_live_claim_is_kept_and_only_its_holder_releases_it(tmp_path: pathlib.Path) -> None:
    claim = tmp_path / "claim"
    assert claims.take(claim, "me", stale=lambda text: False)  # no claim yet: taken
    assert not claims.take(claim, "you", stale=lambda text: text != "me")
    claims.hold(claim, "me, later")
    assert claim.read_text() == "me, later"
    claims.release(claim, mine=lambda text: text == "you")
    assert claim.read_text() == "me, later"
    claims.release(claim, mine=lambda text: text.startswith("me"))
    assert not claim.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["claim.lock"]  # no partial left
