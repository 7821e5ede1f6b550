"""Who is calling: the API key in the gRPC metadata, checked exactly like the gateway's keys.

The fal SDK sends a key as two metadata entries, ``auth-key-id`` and ``auth-key`` (the secret).
The key's record is read from its Secret on every call, so a revoked or deleted key is refused
at once; only the deliberately slow hash check (about 0.1 s of CPU) is remembered, by the
SHA-256 fingerprint of the full key and the hash it matched, for ``cache_seconds``. Failed
checks are remembered briefly too, so repeating a wrong key cannot burn CPU.

A *different* wrong secret each time would still cost one hash per call, so hash checks are
throttled as the gateway throttles them (docs/security.md): token buckets of
``failures_per_key`` per minute per key id and ``failures_per_ip`` per minute per client IP,
taken before the hash and given back when it matches, so only failures count. An empty bucket
refuses the call before any hashing: ``RESOURCE_EXHAUSTED`` (REST: 429). The client IP is the
TLS connection's peer: for gRPC behind the front door, :class:`PeerAddresses` maps the Unix
socket the front door connected from to the address it accepted (no caller-set header).

No key, a malformed, unknown, wrong or revoked key: ``UNAUTHENTICATED``. Which namespaces a
valid key may touch is the caller's business (:class:`Caller`); refusing another namespace is
``PERMISSION_DENIED``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable

from kubefal_api import apikeys, ratelimit
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


def socket_ip(peername: object) -> str | None:
    """The IP address of a TCP socket's ``getpeername()``; ``None`` for anything else."""
    if not isinstance(peername, tuple) or not peername:
        return None
    try:
        return str(ipaddress.ip_address(str(peername[0]).partition("%")[0]))
    except ValueError:
        return None


class PeerAddresses:
    """Which client address each relayed gRPC connection belongs to.

    The front door connects to grpcio's Unix socket from a socket it binds to a path of its own
    private directory, and records that path with the TLS peer's IP; grpcio reports the path as
    the call's peer (``unix:<path>``). Nothing a caller sends can set it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, str] = {}

    def add(self, path: str, client: str) -> None:
        with self._lock:
            self._clients[path] = client

    def remove(self, path: str) -> None:
        with self._lock:
            self._clients.pop(path, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._clients)

    def client(self, peer: str) -> str | None:
        """The client IP of a grpcio peer string (``unix:<path>``, ``ipv4:<ip>:<port>``...)."""
        kind, _, rest = peer.partition(":")
        rest = urllib.parse.unquote(rest)  # grpcio writes ipv6:%5B::1%5D:port
        if kind == "unix":
            with self._lock:
                return self._clients.get(rest)
        if kind == "ipv4":
            host = rest.rpartition(":")[0]
        elif kind == "ipv6":
            host = rest.rpartition(":")[0].strip("[]").partition("%")[0]
        else:
            return None
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            return None


class Authenticator:
    """Turns call metadata into a :class:`Caller`, or refuses the call."""

    def __init__(
        self,
        load_record: Callable[[str], apikeys.KeyRecord | None],
        *,
        cache_seconds: float,
        failures_per_key: int = 0,
        failures_per_ip: int = 0,
        max_tracked: int = MAX_CACHE_ENTRIES,
        peers: PeerAddresses | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load_record = load_record
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[str, float]] = {}
        self._failed: dict[str, float] = {}
        self.peers = peers if peers is not None else PeerAddresses()
        self._failures = ratelimit.FailureThrottle(
            per_key=failures_per_key, per_ip=failures_per_ip, max_keys=max_tracked, clock=clock
        )
        self.hash_verifications = 0
        """Hash checks computed (for tests and the log)."""
        self.throttled = 0
        """Calls refused before hashing because a failed-attempt bucket was empty."""

    def authenticate_call(self, metadata: Iterable[tuple[str, str | bytes]], peer: str) -> Caller:
        """:meth:`authenticate` for a gRPC call whose grpcio peer string is ``peer``."""
        return self.authenticate(metadata, client=self.peers.client(peer))

    def authenticate(
        self, metadata: Iterable[tuple[str, str | bytes]], *, client: str | None = None
    ) -> Caller:
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
            self._take_throttles(key.id, client)
            with self._lock:
                self.hash_verifications += 1
            if not apikeys.verify_secret(secret=key.secret, encoded_hash=record.hash):
                with self._lock:
                    if len(self._failed) >= MAX_CACHE_ENTRIES:
                        self._failed.clear()
                    self._failed[fingerprint] = now + FAILED_CACHE_SECONDS
                raise errors.unauthenticated(f"Invalid API key: wrong secret for key {key.id}")
            self._refund_throttles(key.id, client)
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

    def _take_throttles(self, key_id: str, client: str | None) -> None:
        with self._lock:
            refused = self._failures.take(key_id, client)
            if refused is None:
                return
            self.throttled += 1
        budget, retry_after = refused
        if budget == "ip":
            raise errors.resource_exhausted(
                f"Too many failed API-key attempts from this address; retry in {retry_after} s"
            )
        raise errors.resource_exhausted(
            f"Too many failed attempts for API key {key_id}; retry in {retry_after} s"
        )

    def _refund_throttles(self, key_id: str, client: str | None) -> None:
        with self._lock:
            self._failures.refund(key_id, client)

    def tracked_failures(self) -> tuple[int, int]:
        """(key ids, client addresses) the failed-check budgets hold."""
        with self._lock:
            return self._failures.tracked()
