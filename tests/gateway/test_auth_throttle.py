"""The API-key verifier against a wrong-secret flood: hash work per attempt, throttles, the
verification cache, the bounded verifier pool and the per-key rate limit (issue 9, items 10, 12).

These drive `auth.KeyStore` in process with the real scrypt; the same limits are exercised over
TLS against a real gateway in test_gateway_edge.py.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from kubefal_api import apikeys
from kubefal_gateway import auth, errors


class CountingVerifier:
    """The real `apikeys.verify_secret`, counting calls and the hashes it was given."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls = 0
        self.hashes: list[str] = []
        self.gate = gate

    def __call__(self, *, secret: str, encoded_hash: str) -> bool:
        self.calls += 1
        self.hashes.append(encoded_hash)
        if self.gate is not None:
            self.gate.wait(timeout=30)
        return apikeys.verify_secret(secret=secret, encoded_hash=encoded_hash)


def store_with(key: apikeys.ApiKey, verifier: CountingVerifier, **limits: Any) -> auth.KeyStore:
    store = auth.KeyStore(limits=auth.AuthLimits(**limits), verifier=verifier)
    store.put(apikeys.new_record(key=key, namespaces=["*"]))
    return store


def header(key_id: str, secret: str) -> str:
    return f"Key {key_id}:{secret}"


def wrong_secret(index: int) -> str:
    return f"wrong-secret-{index}"


async def test_unknown_and_known_key_ids_fail_on_the_same_path_with_one_hash_each() -> None:
    key = apikeys.generate_key()
    verifier = CountingVerifier()
    store = store_with(key, verifier)
    unknown_id = apikeys.generate_key().id
    try:
        with pytest.raises(errors.MissingCredentials) as known_failure:
            await store.verify(header(key.id, wrong_secret(1)), client="10.0.0.1")
        assert verifier.calls == 1
        with pytest.raises(errors.MissingCredentials) as unknown_failure:
            await store.verify(header(unknown_id, wrong_secret(1)), client="10.0.0.1")
        assert verifier.calls == 2, "an unknown key id must cost the same hash as a known one"
        assert known_failure.value.detail == unknown_failure.value.detail
        # The dummy hash has the default parameters, like every record `kubefal keys` writes.
        real_params = store.records[key.id].hash.split("$")[:4]
        assert verifier.hashes[1].split("$")[:4] == real_params
    finally:
        store.close()


async def test_a_valid_caller_pays_the_hash_once_and_a_revocation_ends_the_cache() -> None:
    key = apikeys.generate_key()
    verifier = CountingVerifier()
    store = store_with(key, verifier)
    try:
        for _ in range(50):
            record = await store.verify(header(key.id, key.secret), client="10.0.0.1")
            assert record.id == key.id
        assert verifier.calls == 1
        revoked = store.records[key.id]
        store.put(
            apikeys.KeyRecord(
                id=revoked.id,
                hash=revoked.hash,
                namespaces=revoked.namespaces,
                description="",
                created=revoked.created,
                revoked=True,
            )
        )
        with pytest.raises(errors.MissingCredentials, match="revoked"):
            await store.verify(header(key.id, key.secret), client="10.0.0.1")
    finally:
        store.close()


async def test_failures_per_key_id_are_throttled_with_retry_after_known_or_unknown() -> None:
    key = apikeys.generate_key()
    verifier = CountingVerifier()
    store = store_with(key, verifier, failures_per_key=5, failures_per_ip=0)
    unknown_id = apikeys.generate_key().id
    try:
        # A valid caller verified before the attack keeps working during it.
        await store.verify(header(key.id, key.secret), client="10.0.0.9")
        for key_id in (key.id, unknown_id):
            outcomes = []
            for index in range(12):
                try:
                    await store.verify(header(key_id, wrong_secret(index)), client="10.0.0.2")
                    outcomes.append("ok")
                except errors.TooManyRequests as error:
                    assert error.status == 429
                    assert (b"retry-after", str(error.retry_after).encode()) in error.headers
                    assert error.retry_after >= 1
                    outcomes.append("429")
                except errors.MissingCredentials:
                    outcomes.append("401")
            assert outcomes == ["401"] * 5 + ["429"] * 7, (key_id, outcomes)
            record = await store.verify(header(key.id, key.secret), client="10.0.0.9")
            assert record.id == key.id
        assert verifier.calls == 1 + 5 + 5, "throttled attempts must not reach the hash"
    finally:
        store.close()


async def test_failures_per_client_ip_are_throttled_across_key_ids() -> None:
    key = apikeys.generate_key()
    verifier = CountingVerifier()
    store = store_with(key, verifier, failures_per_key=0, failures_per_ip=3)
    try:
        for index in range(3):
            with pytest.raises(errors.MissingCredentials):
                await store.verify(
                    header(apikeys.generate_key().id, wrong_secret(index)), client="10.0.0.3"
                )
        with pytest.raises(errors.TooManyRequests):
            await store.verify(header(apikeys.generate_key().id, "x"), client="10.0.0.3")
        # Another address, and a valid key from the throttled one, still get through: a
        # success gives its token back, so only failures count.
        with pytest.raises(errors.MissingCredentials):
            await store.verify(header(apikeys.generate_key().id, "x"), client="10.0.0.4")
        assert verifier.calls == 4
    finally:
        store.close()


async def test_the_verifier_pool_is_bounded_and_a_full_queue_answers_429_at_once() -> None:
    key = apikeys.generate_key()
    gate = threading.Event()
    verifier = CountingVerifier(gate=gate)
    store = store_with(
        key, verifier, verify_concurrency=1, verify_queue=2, failures_per_key=0, failures_per_ip=0
    )
    try:
        pending = [
            asyncio.ensure_future(store.verify(header(key.id, wrong_secret(i)), client="10.0.0.5"))
            for i in range(2)
        ]
        await asyncio.sleep(0)
        with pytest.raises(errors.TooManyRequests, match="in progress"):
            await store.verify(header(key.id, wrong_secret(9)), client="10.0.0.5")
        gate.set()
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(result, errors.MissingCredentials) for result in results)
        assert verifier.calls == 2
    finally:
        gate.set()
        store.close()


def test_the_per_key_rate_limit_admits_the_burst_then_answers_429() -> None:
    key = apikeys.generate_key()
    store = store_with(key, CountingVerifier(), rate_limit=0.5, rate_burst=3)
    record = store.records[key.id]
    for _ in range(3):
        store.admit(record)
    with pytest.raises(errors.TooManyRequests) as refused:
        store.admit(record)
    assert refused.value.retry_after == 2
    store.close()
