"""Concurrent first requests with one valid key cost one hash and are never throttled.

Found by `make chaos` (smuggling case): 16 concurrent callers with the same valid key each took
a failed-attempt token before the first hash finished, so the 11th got 429 "Too many failed
attempts for this API key id" although every one of them held the right secret.
"""

from __future__ import annotations

import asyncio
import threading

from test_auth_throttle import CountingVerifier, header, store_with, wrong_secret

from kubefal_api import apikeys
from kubefal_gateway import errors


async def test_concurrent_requests_with_one_valid_key_share_one_hash_and_all_pass() -> None:
    key = apikeys.generate_key()
    gate = threading.Event()
    verifier = CountingVerifier(gate)
    store = store_with(key, verifier, failures_per_key=3, failures_per_ip=3)
    try:
        calls = [
            asyncio.create_task(store.verify(header(key.id, key.secret), client="10.0.0.7"))
            for _ in range(32)
        ]
        await asyncio.sleep(0)  # every request is waiting before the one hash may finish
        gate.set()
        records = await asyncio.gather(*calls)
        assert {record.id for record in records} == {key.id}
        assert verifier.calls == 1
        assert store.throttled == 0
    finally:
        store.close()


async def test_concurrent_wrong_secrets_share_one_hash_and_all_fail_as_401() -> None:
    key = apikeys.generate_key()
    gate = threading.Event()
    verifier = CountingVerifier(gate)
    store = store_with(key, verifier, failures_per_key=3, failures_per_ip=3)
    try:
        calls = [
            asyncio.create_task(store.verify(header(key.id, wrong_secret(1)), client="10.0.0.7"))
            for _ in range(8)
        ]
        await asyncio.sleep(0)
        gate.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(outcome, errors.MissingCredentials) for outcome in outcomes)
        assert verifier.calls == 1
    finally:
        store.close()
