"""API-key authentication and the per-app auth modes (private, shared, public).

Keys are `<id>:<secret>` (kubefal_api.apikeys); the gateway holds only their hashed records,
loaded from Kubernetes Secrets labelled `kubefal.io/api-key=true` or from the static file.

A hash verification costs tens of milliseconds of CPU on purpose (scrypt: 38 ms on the reference
machine), which makes the verifier itself the target: unthrottled wrong secrets burned the
gateway's CPU and slowed every valid caller, and a known key id answered 60x slower than an
unknown one, revealing which ids exist. So `KeyStore.verify`:

* remembers successful verifications in memory, keyed by a keyed BLAKE2b digest of the full key
  (a per-process random key, so the cache is no offline oracle); a hit costs one dict lookup and
  the entry's lifetime slides with use, so a valid caller pays scrypt once, not once per
  `key_cache_ttl`. A hit is checked against the current record (hash and revocation), so a
  rotated or revoked key stops working at once;
* throttles verifications that reach the hash per client IP and per key id (token buckets of
  `auth_failures_per_ip` / `auth_failures_per_key` per minute; a token is given back when the
  verification succeeds, so only failures count) and answers 429 with `Retry-After`;
* verifies an unknown key id against a dummy hash with the default parameters, on the same code
  path as a known id (same throttles, one hash computation each), so failures do not reveal
  which ids exist;
* runs the hash in a small thread pool of its own (`key_verify_concurrency` threads) with at most
  `key_verify_queue` verifications waiting; beyond that a caller gets 429 at once, so a flood
  cannot queue unbounded work nor stall the event loop.

`admit` is the per-key request rate limit (`key_rate_limit` per second, burst `key_rate_burst`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import secrets
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector as _CollectorBase

from kubefal_api import apikeys, ratelimit
from kubefal_gateway import apps, errors, settings

FAILED_CACHE_TTL = 5.0
MAX_CACHE_ENTRIES = 100_000


@dataclasses.dataclass(frozen=True)
class AuthLimits:
    """The knobs of `KeyStore` (settings.py documents each as a flag)."""

    cache_ttl: float = 300.0
    verify_concurrency: int = 2
    verify_queue: int = 64
    failures_per_key: int = 10
    """Hash verifications per minute (burst as large) per key id; 0: unlimited."""
    failures_per_ip: int = 60
    """Hash verifications per minute (burst as large) per client IP; 0: unlimited."""
    rate_limit: float = 1000.0
    """Requests per second per API key; 0: unlimited."""
    rate_burst: int = 2000


def limits_from_settings(config: settings.Settings) -> AuthLimits:
    return AuthLimits(
        cache_ttl=config.key_cache_ttl,
        verify_concurrency=config.key_verify_concurrency,
        verify_queue=config.key_verify_queue,
        failures_per_key=config.auth_failures_per_key,
        failures_per_ip=config.auth_failures_per_ip,
        rate_limit=config.key_rate_limit,
        rate_burst=config.key_rate_burst,
    )


class KeyStore:
    """The known key records, a cache of successful verifications, and the throttles."""

    def __init__(
        self,
        *,
        limits: AuthLimits | None = None,
        verifier: Callable[..., bool] | None = None,
    ) -> None:
        self.limits = limits or AuthLimits()
        self.records: dict[str, apikeys.KeyRecord] = {}
        self.hash_verifications = 0
        """Hash computations started (a counter for metrics and tests)."""
        self.throttled = 0
        """Verifications refused with 429."""
        self._verifier = verifier
        self._cache_key = secrets.token_bytes(32)
        # digest of the full key -> (key id, hash it was verified against, expiry)
        self._verified: dict[bytes, tuple[str, str, float]] = {}
        self._failed: dict[bytes, float] = {}
        # digest of the full key -> resolved when its hash verification ends (single flight)
        self._pending: dict[bytes, asyncio.Future[None]] = {}
        self._dummy_hash = apikeys.hash_secret(secrets.token_urlsafe(32))
        self._failures = ratelimit.FailureThrottle(
            per_key=self.limits.failures_per_key, per_ip=self.limits.failures_per_ip
        )
        self._rate = (
            ratelimit.TokenBuckets(
                rate=self.limits.rate_limit, burst=max(1, self.limits.rate_burst)
            )
            if self.limits.rate_limit > 0
            else None
        )
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._waiting = 0

    def put(self, record: apikeys.KeyRecord) -> None:
        self.records[record.id] = record

    def remove(self, key_id: str) -> None:
        self.records.pop(key_id, None)

    def replace_all(self, records: list[apikeys.KeyRecord]) -> None:
        self.records = {record.id: record for record in records}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _digest(self, key: apikeys.ApiKey) -> bytes:
        raw = str(key).encode("utf-8")
        return hashlib.blake2b(raw, key=self._cache_key, digest_size=32).digest()

    def admit(self, record: apikeys.KeyRecord) -> None:
        """The per-key request rate limit: 429 with `Retry-After` when the key's bucket is empty."""
        if self._rate is None:
            return
        wait = self._rate.take(record.id)
        if wait:
            raise errors.TooManyRequests(
                "Rate limit of this API key exceeded", retry_after=self._rate.retry_after(wait)
            )

    async def verify(self, header: str, *, client: str | None = None) -> apikeys.KeyRecord:
        """The record of a valid, unrevoked key; 401 otherwise, 429 when throttled."""
        try:
            key = apikeys.parse_authorization(header)
        except apikeys.InvalidApiKeyError as error:
            raise errors.MissingCredentials(f"Invalid API key: {error}") from error
        now = time.monotonic()
        digest = self._digest(key)
        record = self.records.get(key.id)
        cached = self._verified.get(digest)
        if (
            cached is not None
            and record is not None
            and cached[0] == key.id
            and cached[1] == record.hash
            and cached[2] > now
        ):
            if record.revoked:
                raise errors.MissingCredentials("API key revoked")
            self._verified[digest] = (key.id, record.hash, now + self.limits.cache_ttl)
            return record
        failed_until = self._failed.get(digest)
        if failed_until is not None and failed_until > now:
            raise errors.MissingCredentials("Invalid API key")
        pending = self._pending.get(digest)
        if pending is not None:
            # The same key is being verified for another request: wait for that one hash
            # instead of charging the throttles (and the CPU) once per concurrent request.
            await pending
            return await self.verify(header, client=client)
        pending = asyncio.get_running_loop().create_future()
        self._pending[digest] = pending
        try:
            return await self._verify_uncached(key, digest, record, client)
        finally:
            del self._pending[digest]
            pending.set_result(None)

    async def _verify_uncached(
        self,
        key: apikeys.ApiKey,
        digest: bytes,
        record: apikeys.KeyRecord | None,
        client: str | None,
    ) -> apikeys.KeyRecord:
        self._take_throttles(key.id, client)
        encoded_hash = record.hash if record is not None else self._dummy_hash
        ok = await self._verify_hash(key.secret, encoded_hash) and record is not None
        if not ok:
            if len(self._failed) >= MAX_CACHE_ENTRIES:
                self._failed.clear()
            self._failed[digest] = time.monotonic() + FAILED_CACHE_TTL
            raise errors.MissingCredentials("Invalid API key")
        assert record is not None
        self._refund_throttles(key.id, client)
        if len(self._verified) >= MAX_CACHE_ENTRIES:
            self._verified.clear()
        self._verified[digest] = (key.id, record.hash, time.monotonic() + self.limits.cache_ttl)
        if record.revoked:
            raise errors.MissingCredentials("API key revoked")
        return record

    def _take_throttles(self, key_id: str, client: str | None) -> None:
        refused = self._failures.take(key_id, client)
        if refused is None:
            return
        self.throttled += 1
        budget, retry_after = refused
        raise errors.TooManyRequests(
            "Too many failed API-key attempts from this address"
            if budget == "ip"
            else "Too many failed attempts for this API key id",
            retry_after=retry_after,
        )

    def _refund_throttles(self, key_id: str, client: str | None) -> None:
        self._failures.refund(key_id, client)

    async def _verify_hash(self, secret: str, encoded_hash: str) -> bool:
        """One hash computation in the key pool; 429 when too many are already waiting."""
        if self._waiting >= self.limits.verify_queue:
            self.throttled += 1
            raise errors.TooManyRequests(
                "Too many API-key verifications in progress", retry_after=1
            )
        if self._pool is None or self._slots is None:
            workers = max(1, self.limits.verify_concurrency)
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="kubefal-keys"
            )
            self._slots = asyncio.Semaphore(workers)
        self._waiting += 1
        try:
            async with self._slots:
                self.hash_verifications += 1
                loop = asyncio.get_running_loop()
                verifier = self._verifier or apikeys.verify_secret
                return await loop.run_in_executor(
                    self._pool, lambda: verifier(secret=secret, encoded_hash=encoded_hash)
                )
        finally:
            self._waiting -= 1


class Collector(_CollectorBase):
    """`kubefal_gateway_key_hash_verifications_total` and `..._auth_throttled_total`."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "kubefal_gateway_key_hash_verifications",
            "API-key hash computations (cache misses, known and unknown key ids alike)",
            value=self.keys.hash_verifications,
        )
        yield CounterMetricFamily(
            "kubefal_gateway_auth_throttled",
            "API-key verifications refused with 429 (failed-attempt throttles, busy verifier)",
            value=self.keys.throttled,
        )


async def authorize(
    keys: KeyStore,
    *,
    app: apps.AppConfig,
    authorization: str | None,
    client: str | None = None,
) -> apikeys.KeyRecord | None:
    """Apply the app's auth mode; 401 for a missing or bad key, 403 for another namespace's key,
    429 when throttled or over the key's rate limit. `client` is the caller's IP address."""
    if app.auth is apps.AuthMode.PUBLIC:
        return None
    if not authorization:
        raise errors.MissingCredentials("Missing API key: send 'Authorization: Key <id>:<secret>'")
    record = await keys.verify(authorization, client=client)
    if not record.allows_scope(apikeys.SCOPE_APPS):
        # A runner's storage-only key (docs/fal-storage.md): files yes, app calls never.
        raise errors.Forbidden(
            f"API key {record.id} may not call apps (its scopes: {', '.join(record.scopes)})"
        )
    if app.auth is apps.AuthMode.PRIVATE and not record.allows_namespace(app.namespace):
        raise errors.Forbidden(f"This API key is not allowed to call apps in {app.namespace!r}")
    keys.admit(record)
    return record


async def identify(
    keys: KeyStore, *, authorization: str | None, client: str | None = None
) -> apikeys.KeyRecord | None:
    """The record of the key a caller of a `public` app sent, when it is valid and may call
    apps: its queued requests are then bound to it (docs/security.md, "Queued requests, uploads
    and ids"). None without a key or with a bad one (a public app serves those anonymously, as
    before); 429 when the verification is throttled."""
    if not authorization:
        return None
    try:
        record = await keys.verify(authorization, client=client)
    except errors.MissingCredentials:
        return None
    return record if record.allows_scope(apikeys.SCOPE_APPS) else None


def record_from_static_entry(entry: dict[str, object]) -> apikeys.KeyRecord:
    """A `keys` entry of the static file: a full `key`, or a stored `id` + `hash` record."""
    namespaces_raw = entry.get("namespaces", "*")
    if isinstance(namespaces_raw, list):
        namespaces_text = ",".join(str(item) for item in namespaces_raw)
    else:
        namespaces_text = str(namespaces_raw)
    if "key" in entry:
        key = apikeys.parse_key(str(entry["key"]))
        fields = {
            apikeys.FIELD_ID: key.id,
            apikeys.FIELD_HASH: apikeys.hash_secret(key.secret),
            apikeys.FIELD_NAMESPACES: namespaces_text,
        }
    else:
        fields = {
            apikeys.FIELD_ID: str(entry.get("id", "")),
            apikeys.FIELD_HASH: str(entry.get("hash", "")),
            apikeys.FIELD_NAMESPACES: namespaces_text,
        }
    fields[apikeys.FIELD_REVOKED] = str(entry.get("revoked", False)).lower()
    if "scopes" in entry:
        scopes_raw = entry["scopes"]
        fields[apikeys.FIELD_SCOPES] = (
            ",".join(str(item) for item in scopes_raw)
            if isinstance(scopes_raw, list)
            else str(scopes_raw)
        )
    return apikeys.record_from_fields(fields)
