"""API keys: format, hashing and the Kubernetes Secret that stores them.

Shared by the gateway (which verifies keys on every request) and the CLI (``kubefal keys``, which
creates, lists and revokes them), so both agree byte for byte on how a key is written down. Pure:
standard library only, no I/O.

Key format
    ``<id>:<secret>``, exactly what ``fal_client`` sends as ``Authorization: Key <FAL_KEY>``
    and what the fal SDK requires of ``FAL_KEY``.

    * ``id``: ``kf`` + 16 lowercase hex characters (``kf3a0c...``). Public; names the Secret.
    * ``secret``: 32 random bytes, URL-safe base64 without padding (43 characters). Shown once.

Hash format (self-describing, so parameters can change without breaking old keys)
    ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (the default) or
    ``pbkdf2_sha256$<iterations>$<salt>$<hash>``; salt and hash are URL-safe base64 without
    padding; every key has its own 16-byte salt.
    Verification is constant-time (:func:`hmac.compare_digest`). A verify costs about 0.1 s of CPU
    on purpose, so a caller on a hot path (the gateway) should remember successful verifications
    in memory, keyed by :func:`fingerprint` of the presented key, and forget them when the Secret
    changes.

Kubernetes Secret layout (one Secret per key, in the gateway's namespace, e.g. ``kubefal-system``)
    ::

        apiVersion: v1
        kind: Secret
        type: kubefal.io/api-key
        metadata:
          name: kubefal-key-<id>
          labels:
            kubefal.io/api-key: "true"          # select all keys with this label
            kubefal.io/api-key-id: <id>
        stringData:                             # the API server returns these base64'd in `data`
          id: <id>
          hash: scrypt$16384$8$1$<salt>$<hash>  # never the secret itself
          namespaces: "team-a,team-b"           # comma list of namespaces, or "*" for all
          description: <free text, may be empty>
          created: 2026-11-25T18:46:47Z         # RFC 3339, UTC
          revoked: "false"                      # "true" once revoked; a revoked key never verifies
          scopes: "storage"                     # optional; absent or "*": every scope

    Consumers select Secrets by the label (not by ``type``). :func:`secret_manifest` builds this
    object and :func:`record_from_secret` reads it back from either ``data`` or ``stringData``.

Scope
    A key authorizes requests to apps in the namespaces it lists (``*``: every namespace). What
    that means per app (``private``: key's namespaces must include the app's; ``shared``: any
    valid key; ``public``: no key) is decided by the gateway; :meth:`KeyRecord.check` gives the
    key-level verdict it needs.

    A key also has scopes, what it may be used for: ``apps`` (call apps, mint realtime tokens,
    use the control plane) and ``storage`` (fal's file storage, the KV store and ``/data``).
    Keys made by ``kubefal keys create`` have every scope (``*``). The key the operator gives
    each runner (``kubefal.io/runner-key`` Secrets) has only ``storage``: code in a runner can
    store and read its namespace's files without being able to call any app.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, Final

KEY_ID_PREFIX: Final = "kf"
KEY_ID_PATTERN: Final = re.compile(r"^kf[0-9a-f]{16}$")
SECRET_NAME_PREFIX: Final = "kubefal-key-"
SECRET_TYPE: Final = "kubefal.io/api-key"
LABEL_API_KEY: Final = "kubefal.io/api-key"
LABEL_API_KEY_ID: Final = "kubefal.io/api-key-id"
LABEL_SELECTOR: Final = f"{LABEL_API_KEY}=true"
ALL_NAMESPACES: Final = "*"
ALL_SCOPES: Final = "*"
SCOPE_APPS: Final = "apps"
"""Call apps (run, queue, stream, realtime), mint realtime tokens, use the control plane."""
SCOPE_STORAGE: Final = "storage"
"""Upload and read files, the KV store and /data, in the key's namespaces."""
SCOPES: Final = frozenset({SCOPE_APPS, SCOPE_STORAGE})

FIELD_ID: Final = "id"
FIELD_HASH: Final = "hash"
FIELD_NAMESPACES: Final = "namespaces"
FIELD_DESCRIPTION: Final = "description"
FIELD_CREATED: Final = "created"
FIELD_REVOKED: Final = "revoked"
FIELD_SCOPES: Final = "scopes"

SECRET_BYTES: Final = 32
SALT_BYTES: Final = 16
HASH_BYTES: Final = 32
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
PBKDF2_ITERATIONS: Final = 600_000
MAX_SECRET_LENGTH: Final = 256
MAX_DESCRIPTION_LENGTH: Final = 1024

_NAMESPACE_PATTERN: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SECRET_PATTERN: Final = re.compile(r"^[A-Za-z0-9_\-]+$")


class InvalidApiKeyError(ValueError):
    """A presented key is not of the form ``<id>:<secret>``."""


class InvalidKeyRecordError(ValueError):
    """A Secret does not hold a well-formed kubefal API key record."""


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """A full API key. ``str(key)`` is what goes into ``FAL_KEY``; never log it."""

    id: str
    secret: str

    def __str__(self) -> str:
        return f"{self.id}:{self.secret}"

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!r}, secret='***')"


class KeyVerdict(enum.Enum):
    """Key-level outcome of checking a presented key against its stored record."""

    OK = "ok"
    WRONG_SECRET = "wrong_secret"
    REVOKED = "revoked"
    NAMESPACE_NOT_ALLOWED = "namespace_not_allowed"


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    """What a Secret stores about a key: everything except the secret itself."""

    id: str
    hash: str
    namespaces: tuple[str, ...]
    description: str
    created: datetime.datetime
    revoked: bool = False
    scopes: tuple[str, ...] = (ALL_SCOPES,)
    """What the key may be used for (``SCOPE_*``); ``("*",)``: everything."""

    @property
    def all_namespaces(self) -> bool:
        return ALL_NAMESPACES in self.namespaces

    def allows_scope(self, scope: str) -> bool:
        return ALL_SCOPES in self.scopes or scope in self.scopes

    def allows_namespace(self, namespace: str) -> bool:
        return self.all_namespaces or namespace in self.namespaces

    def fal_account(self) -> dict[str, str]:
        """fal's ``GET /users/current`` answer for this key (the fal CLI asks it when
        ``--team`` is given with a key): ``user_id`` is the key id and the team (``nickname``)
        the key's namespace when it has exactly one, else the key id; a key acts for its
        namespaces whatever ``--team`` says (docs/fal-compat.md, "Environments and teams")."""
        namespaces = () if self.all_namespaces else self.namespaces
        reach = ", ".join(namespaces) if namespaces else "every namespace"
        return {
            "user_id": self.id,
            "nickname": namespaces[0] if len(namespaces) == 1 else self.id,
            "full_name": f"kubefal API key {self.id} ({reach})",
        }

    def check(self, *, secret: str, namespace: str | None) -> KeyVerdict:
        """Verify ``secret`` and, when ``namespace`` is given, the key's scope.

        The hash is verified first, so a caller cannot learn a key's scope or state without
        knowing its secret.
        """
        if not verify_secret(secret=secret, encoded_hash=self.hash):
            return KeyVerdict.WRONG_SECRET
        if self.revoked:
            return KeyVerdict.REVOKED
        if namespace is not None and not self.allows_namespace(namespace):
            return KeyVerdict.NAMESPACE_NOT_ALLOWED
        return KeyVerdict.OK


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_key() -> ApiKey:
    """A fresh random key (id: 64 random bits, secret: 256 random bits)."""
    return ApiKey(
        id=KEY_ID_PREFIX + secrets.token_hex(8),
        secret=secrets.token_urlsafe(SECRET_BYTES),
    )


def is_valid_key_id(key_id: str) -> bool:
    return KEY_ID_PATTERN.fullmatch(key_id) is not None


def parse_key(raw: str) -> ApiKey:
    """Split ``<id>:<secret>``; raise :class:`InvalidApiKeyError` naming what is wrong."""
    key_id, separator, secret = raw.strip().partition(":")
    if not separator:
        raise InvalidApiKeyError("an API key has the form <id>:<secret>; no ':' was found")
    if not is_valid_key_id(key_id):
        raise InvalidApiKeyError(
            f"the key id must be {KEY_ID_PREFIX!r} followed by 16 lowercase hex characters"
        )
    if not secret or len(secret) > MAX_SECRET_LENGTH or not _SECRET_PATTERN.fullmatch(secret):
        raise InvalidApiKeyError(
            "the key secret must be 1 to 256 URL-safe base64 characters (A-Z a-z 0-9 - _)"
        )
    return ApiKey(id=key_id, secret=secret)


def parse_authorization(header_value: str) -> ApiKey:
    """Read the key from an ``Authorization: Key <id>:<secret>`` header (as fal_client sends it)."""
    scheme, _, credentials = header_value.strip().partition(" ")
    if scheme.lower() != "key" or not credentials.strip():
        raise InvalidApiKeyError("expected the header 'Authorization: Key <id>:<secret>'")
    return parse_key(credentials)


def fingerprint(key: ApiKey) -> str:
    """A fast, non-reversible digest of a full key, for in-memory verification caches."""
    return hashlib.sha256(str(key).encode("utf-8")).hexdigest()


def hash_secret(secret: str, *, salt: bytes | None = None) -> str:
    """Hash a secret with scrypt and a fresh salt, as ``scrypt$n$r$p$salt$hash``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = _scrypt(secret=secret, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64encode(salt)}${_b64encode(digest)}"


def hash_secret_pbkdf2(
    secret: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """Hash a secret with PBKDF2-SHA256, for platforms whose OpenSSL lacks scrypt."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations, HASH_BYTES)
    return f"pbkdf2_sha256${iterations}${_b64encode(salt)}${_b64encode(digest)}"


def _scrypt(*, secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=HASH_BYTES,
        maxmem=4 * 128 * r * n,
    )


def verify_secret(*, secret: str, encoded_hash: str) -> bool:
    """True when ``secret`` matches ``encoded_hash``; False for a mismatch or a malformed hash."""
    parts = encoded_hash.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            if n < 2 or n & (n - 1) or not 1 <= p <= 16 or r < 1 or 128 * r * n > 2**28:
                return False
            salt, expected = _b64decode(parts[4]), _b64decode(parts[5])
            actual = _scrypt(secret=secret, salt=salt, n=n, r=r, p=p)
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            iterations = int(parts[1])
            if not 1 <= iterations <= 10_000_000:
                return False
            salt, expected = _b64decode(parts[2]), _b64decode(parts[3])
            actual = hashlib.pbkdf2_hmac(
                "sha256", secret.encode("utf-8"), salt, iterations, len(expected) or HASH_BYTES
            )
        else:
            return False
    except (ValueError, binascii.Error):
        return False
    return len(expected) == HASH_BYTES and hmac.compare_digest(actual, expected)


def is_valid_namespace(namespace: str) -> bool:
    """A Kubernetes namespace name (RFC 1123 label)."""
    return _NAMESPACE_PATTERN.fullmatch(namespace) is not None


def format_namespaces(namespaces: Iterable[str]) -> str:
    """``["b", "a", "a"]`` → ``"a,b"``; any ``"*"`` → ``"*"``. Validates each name."""
    unique = sorted(set(namespaces))
    if not unique:
        raise InvalidKeyRecordError("a key needs at least one namespace, or '*' for all")
    if ALL_NAMESPACES in unique:
        return ALL_NAMESPACES
    bad = [name for name in unique if not is_valid_namespace(name)]
    if bad:
        raise InvalidKeyRecordError(
            f"not a valid namespace name: {', '.join(bad)} (lowercase letters, digits and '-')"
        )
    return ",".join(unique)


def parse_namespaces(text: str) -> tuple[str, ...]:
    """``"a, b"`` → ``("a", "b")``; ``"*"`` → ``("*",)``."""
    names = tuple(sorted({part.strip() for part in text.split(",") if part.strip()}))
    if ALL_NAMESPACES in names:
        return (ALL_NAMESPACES,)
    return names


def format_scopes(scopes: Iterable[str]) -> str:
    """``["storage", "apps"]`` → ``"apps,storage"``; any ``"*"`` → ``"*"``. Validates each."""
    unique = sorted(set(scopes))
    if not unique:
        raise InvalidKeyRecordError("a key needs at least one scope, or '*' for all")
    if ALL_SCOPES in unique:
        return ALL_SCOPES
    bad = [name for name in unique if name not in SCOPES]
    if bad:
        raise InvalidKeyRecordError(
            f"unknown scope: {', '.join(bad)} (known: {', '.join(sorted(SCOPES))} or '*')"
        )
    return ",".join(unique)


def parse_scopes(text: str) -> tuple[str, ...]:
    """``"storage"`` → ``("storage",)``; ``""`` or ``"*"`` → ``("*",)``; unknown names are
    dropped (a key whose every scope is unknown may do nothing)."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    if not names or ALL_SCOPES in names:
        return (ALL_SCOPES,)
    return tuple(sorted(names & SCOPES))


def secret_name(key_id: str) -> str:
    """The name of the Secret holding key ``key_id``."""
    return SECRET_NAME_PREFIX + key_id


def new_record(
    *,
    key: ApiKey,
    namespaces: Iterable[str],
    description: str = "",
    created: datetime.datetime | None = None,
    scopes: Iterable[str] = (ALL_SCOPES,),
) -> KeyRecord:
    """The record to store for a freshly generated ``key``: its hash, never its secret."""
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidKeyRecordError(
            f"the description is longer than {MAX_DESCRIPTION_LENGTH} characters; shorten it"
        )
    return KeyRecord(
        id=key.id,
        hash=hash_secret(key.secret),
        namespaces=parse_namespaces(format_namespaces(namespaces)),
        description=description,
        created=(created or datetime.datetime.now(tz=datetime.UTC)).replace(microsecond=0),
        scopes=parse_scopes(format_scopes(scopes)),
    )


def _format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def string_data(record: KeyRecord) -> dict[str, str]:
    """The Secret's ``stringData`` for ``record`` (``scopes`` only when restricted)."""
    fields = {
        FIELD_ID: record.id,
        FIELD_HASH: record.hash,
        FIELD_NAMESPACES: format_namespaces(record.namespaces),
        FIELD_DESCRIPTION: record.description,
        FIELD_CREATED: _format_time(record.created),
        FIELD_REVOKED: "true" if record.revoked else "false",
    }
    if ALL_SCOPES not in record.scopes:
        fields[FIELD_SCOPES] = ",".join(record.scopes) or "none"
    return fields


def secret_manifest(record: KeyRecord, *, namespace: str) -> dict[str, Any]:
    """The full Secret object for ``record``, in the gateway's ``namespace``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": {
            "name": secret_name(record.id),
            "namespace": namespace,
            "labels": {
                LABEL_API_KEY: "true",
                LABEL_API_KEY_ID: record.id,
                "app.kubernetes.io/managed-by": "kubefal",
            },
        },
        "stringData": string_data(record),
    }


def _decoded_fields(secret: Mapping[str, Any]) -> dict[str, str]:
    fields: dict[str, str] = {}
    data = secret.get("data") or {}
    for name, value in data.items():
        try:
            fields[str(name)] = base64.b64decode(str(value), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as error:
            raise InvalidKeyRecordError(f"field {name!r} is not base64 UTF-8 text") from error
    for name, value in (secret.get("stringData") or {}).items():
        fields[str(name)] = str(value)
    return fields


def record_from_fields(fields: Mapping[str, str]) -> KeyRecord:
    """Read a record from decoded Secret fields (``id``, ``hash``, ...)."""
    missing = [name for name in (FIELD_ID, FIELD_HASH, FIELD_NAMESPACES) if not fields.get(name)]
    if missing:
        raise InvalidKeyRecordError(f"missing field(s): {', '.join(missing)}")
    key_id = fields[FIELD_ID]
    if not is_valid_key_id(key_id):
        raise InvalidKeyRecordError(f"field 'id' is not a kubefal key id: {key_id!r}")
    created_text = fields.get(FIELD_CREATED, "")
    try:
        created = (
            datetime.datetime.fromisoformat(created_text.replace("Z", "+00:00"))
            if created_text
            else datetime.datetime.fromtimestamp(0, tz=datetime.UTC)
        )
    except ValueError as error:
        raise InvalidKeyRecordError(f"field 'created' is not RFC 3339: {created_text!r}") from error
    if created.tzinfo is None:
        created = created.replace(tzinfo=datetime.UTC)
    return KeyRecord(
        id=key_id,
        hash=fields[FIELD_HASH],
        # validated as new_record does: a field of only separators would parse to no namespace
        # at all, which set logic reads as within every caller's scope
        namespaces=parse_namespaces(format_namespaces(parse_namespaces(fields[FIELD_NAMESPACES]))),
        description=fields.get(FIELD_DESCRIPTION, ""),
        created=created,
        revoked=fields.get(FIELD_REVOKED, "false").strip().lower() == "true",
        scopes=parse_scopes(fields.get(FIELD_SCOPES, "")),
    )


def record_from_secret(secret: Mapping[str, Any]) -> KeyRecord:
    """Read a record from a Secret as a dict (``data`` base64'd, or ``stringData``)."""
    return record_from_fields(_decoded_fields(secret))
