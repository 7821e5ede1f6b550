"""Who is calling: the API key in the gRPC metadata, checked exactly like the gateway's keys.

The fal SDK sends a key as two metadata entries, ``auth-key-id`` and ``auth-key`` (the secret).
The key's record is read from its Secret on every call, so a revoked or deleted key is refused
at once; only the deliberately slow hash check (about 0.1 s of CPU) is remembered, by the
SHA-256 fingerprint of the full key and the hash it matched, for ``cache_seconds``. Failed
checks are remembered briefly too, so repeating a wrong key cannot burn CPU.

No key, a malformed, unknown, wrong or revoked key: ``UNAUTHENTICATED``. Which namespaces a
valid key may touch is the caller's business (:class:`Caller`); refusing another namespace is
``PERMISSION_DENIED``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable

from kubefal_api import apikeys
from kubefal_controlplane import errors

METADATA_KEY_ID = "auth-key-id"
METADATA_KEY_SECRET = "auth-key"
FAILED_CACHE_SECONDS = 5.0
MAX_CACHE_ENTRIES = 10_000


@dataclasses.dataclass(frozen=True)
class Caller:
    """A verified, unrevoked key and the namespaces it may see and change."""

    record: apikeys.KeyRecord

    @property
    def key_id(self) -> str:
        return self.record.id

    @property
    def all_namespaces(self) -> bool:
        return self.record.all_namespaces

    @property
    def namespaces(self) -> tuple[str, ...]:
        return self.record.namespaces

    def allows(self, namespace: str) -> bool:
        return self.record.allows_namespace(namespace)

    def require(self, namespace: str) -> None:
        """Raise ``PERMISSION_DENIED`` unless the key is scoped to ``namespace``."""
        if not self.allows(namespace):
            raise errors.permission_denied(
                f"API key {self.key_id} may not see or change apps in namespace {namespace!r} "
                f"(its namespaces: {', '.join(self.namespaces)})"
            )


class Authenticator:
    """Turns call metadata into a :class:`Caller`, or refuses the call."""

    def __init__(
        self,
        load_record: Callable[[str], apikeys.KeyRecord | None],
        *,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load_record = load_record
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[str, float]] = {}
        self._failed: dict[str, float] = {}

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Caller:
        values: dict[str, str] = {}
        for name, value in metadata:
            if name in (METADATA_KEY_ID, METADATA_KEY_SECRET) and isinstance(value, str):
                values[name] = value
        key_id, secret = values.get(METADATA_KEY_ID), values.get(METADATA_KEY_SECRET)
        if not key_id or not secret:
            raise errors.unauthenticated(
                "Missing API key: set FAL_KEY=<id>:<secret> (the SDK sends it as the "
                "'auth-key-id' and 'auth-key' metadata)"
            )
        try:
            key = apikeys.parse_key(f"{key_id}:{secret}")
        except apikeys.InvalidApiKeyError as error:
            raise errors.unauthenticated(f"Invalid API key: {error}") from error
        record = self._load_record(key.id)
        if record is None:
            raise errors.unauthenticated(f"Invalid API key: no key {key.id} exists")
        fingerprint = apikeys.fingerprint(key)
        now = self._clock()
        with self._lock:
            cached = self._verified.get(fingerprint)
            failed_until = self._failed.get(fingerprint)
        verified = cached is not None and cached[0] == record.hash and cached[1] > now
        if not verified:
            if failed_until is not None and failed_until > now:
                raise errors.unauthenticated(f"Invalid API key: wrong secret for key {key.id}")
            if not apikeys.verify_secret(secret=key.secret, encoded_hash=record.hash):
                with self._lock:
                    if len(self._failed) >= MAX_CACHE_ENTRIES:
                        self._failed.clear()
                    self._failed[fingerprint] = now + FAILED_CACHE_SECONDS
                raise errors.unauthenticated(f"Invalid API key: wrong secret for key {key.id}")
            with self._lock:
                if len(self._verified) >= MAX_CACHE_ENTRIES:
                    self._verified.clear()
                self._verified[fingerprint] = (record.hash, now + self._cache_seconds)
        if record.revoked:
            raise errors.unauthenticated(f"API key {key.id} has been revoked")
        if not record.allows_scope(apikeys.SCOPE_APPS):
            raise errors.permission_denied(
                f"API key {key.id} is a storage-only key (a runner's): it cannot manage apps"
            )
        return Caller(record)
