"""API-key authentication and the per-app auth modes (private, shared, public).

Keys are `<id>:<secret>` (kubefal_api.apikeys); the gateway holds only their hashed records,
loaded from Kubernetes Secrets labelled `kubefal.io/api-key=true` or from the static file. A hash
verification costs about 0.1 s of CPU on purpose, so a successful verification is remembered by
the key's SHA-256 fingerprint for `cache_ttl` seconds and the hot path costs one dict lookup; the
hash itself is checked in a worker thread so a burst of bad keys cannot stall the event loop.
"""

from __future__ import annotations

import asyncio
import time

from kubefal_api import apikeys
from kubefal_gateway import apps, errors

FAILED_CACHE_TTL = 5.0


class KeyStore:
    """The known key records, and a cache of recent verification outcomes."""

    def __init__(self, *, cache_ttl: float = 60.0) -> None:
        self.records: dict[str, apikeys.KeyRecord] = {}
        self.cache_ttl = cache_ttl
        # fingerprint of the full key -> (key id, hash it was verified against, expiry)
        self._verified: dict[str, tuple[str, str, float]] = {}
        self._failed: dict[str, float] = {}

    def put(self, record: apikeys.KeyRecord) -> None:
        self.records[record.id] = record

    def remove(self, key_id: str) -> None:
        self.records.pop(key_id, None)

    def replace_all(self, records: list[apikeys.KeyRecord]) -> None:
        self.records = {record.id: record for record in records}

    async def verify(self, header: str) -> apikeys.KeyRecord:
        """The record of a valid, unrevoked key; raise MissingCredentials otherwise."""
        try:
            key = apikeys.parse_authorization(header)
        except apikeys.InvalidApiKeyError as error:
            raise errors.MissingCredentials(f"Invalid API key: {error}") from error
        now = time.monotonic()
        fingerprint = apikeys.fingerprint(key)
        record = self.records.get(key.id)
        if record is None:
            raise errors.MissingCredentials("Invalid API key")
        cached = self._verified.get(fingerprint)
        if (
            cached is not None
            and cached[0] == key.id
            and cached[1] == record.hash
            and cached[2] > now
        ):
            if record.revoked:
                raise errors.MissingCredentials("API key revoked")
            return record
        failed_until = self._failed.get(fingerprint)
        if failed_until is not None and failed_until > now:
            raise errors.MissingCredentials("Invalid API key")
        ok = await asyncio.to_thread(
            apikeys.verify_secret, secret=key.secret, encoded_hash=record.hash
        )
        if not ok:
            if len(self._failed) > 10_000:
                self._failed.clear()
            self._failed[fingerprint] = now + FAILED_CACHE_TTL
            raise errors.MissingCredentials("Invalid API key")
        if len(self._verified) > 100_000:
            self._verified.clear()
        self._verified[fingerprint] = (key.id, record.hash, now + self.cache_ttl)
        if record.revoked:
            raise errors.MissingCredentials("API key revoked")
        return record


async def authorize(
    keys: KeyStore, *, app: apps.AppConfig, authorization: str | None
) -> apikeys.KeyRecord | None:
    """Apply the app's auth mode; 401 for a missing or bad key, 403 for another namespace's key."""
    if app.auth is apps.AuthMode.PUBLIC:
        return None
    if not authorization:
        raise errors.MissingCredentials("Missing API key: send 'Authorization: Key <id>:<secret>'")
    record = await keys.verify(authorization)
    if app.auth is apps.AuthMode.PRIVATE and not record.allows_namespace(app.namespace):
        raise errors.Forbidden(f"This API key is not allowed to call apps in {app.namespace!r}")
    return record


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
    return apikeys.record_from_fields(fields)
