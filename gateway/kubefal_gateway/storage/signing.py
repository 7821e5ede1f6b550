"""Signed, expiring capabilities: file URLs, CDN upload tokens and realtime tokens.

All three are stateless: the gateway signs what it grants with HMAC-SHA256 under one key (the
`--storage-signing-key`, or a random key kept in the object store so every replica sharing the
store verifies what another issued), and checks signature and expiry on use. Nothing is stored
per token, so a token cannot be revoked on its own: a CDN or realtime token names the API key it
was issued to, and the gateway re-checks that key (still known, not revoked, still allowed in
the namespace or app) on every use.

Formats (every part is validated before it is signed or parsed; none contains a dot):

* file URL segment: `<expires>.<sig>` over (`file`, namespace, id, name, expires);
  `expires` is a Unix time in seconds, `0` for a URL that never expires;
* CDN token: `kfcdn.<key id>.<namespace>.<expires>.<sig>`;
* realtime token: `kfrt.<key id>.<expires>.<app>[,<app>...].<sig>`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import time

from kubefal_gateway.storage import names

SIGNATURE_CHARS = 32
CDN_PREFIX = "kfcdn"
REALTIME_PREFIX = "kfrt"
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_APP_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
MAX_TOKEN_APPS = 16


class BadSignature(ValueError):
    """A capability that was not issued by this gateway (or was altered)."""


class Expired(ValueError):
    """A capability whose expiry has passed."""


@dataclasses.dataclass(frozen=True)
class CdnGrant:
    key_id: str
    namespace: str
    expires: int


@dataclasses.dataclass(frozen=True)
class RealtimeGrant:
    key_id: str
    expires: int
    apps: tuple[str, ...]


def is_app_name(value: str) -> bool:
    return _APP_NAME.fullmatch(value) is not None


class Signer:
    """HMAC-SHA256 over a tuple of strings, truncated to 192 bits, URL-safe base64."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the signing key must have at least 16 bytes")
        self._key = key

    def sign(self, *parts: str) -> str:
        message = "\x1f".join(parts).encode("utf-8")
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii")[:SIGNATURE_CHARS]

    def check(self, signature: str, *parts: str) -> None:
        if not hmac.compare_digest(
            signature.encode("ascii", "replace"), self.sign(*parts).encode()
        ):
            raise BadSignature("invalid signature")

    # ---- file URLs ----
    def file_token(self, namespace: str, object_id: str, name: str, *, expires: int) -> str:
        return f"{expires}.{self.sign('file', namespace, object_id, name, str(expires))}"

    def check_file_token(
        self, token: str, namespace: str, object_id: str, name: str, *, now: float | None = None
    ) -> int:
        """The token's expiry; BadSignature or Expired otherwise."""
        expires_text, _, signature = token.partition(".")
        if not expires_text.isdigit() or len(expires_text) > 12 or not signature:
            raise BadSignature("malformed URL signature")
        self.check(signature, "file", namespace, object_id, name, expires_text)
        expires = int(expires_text)
        if expires and expires <= (time.time() if now is None else now):
            raise Expired("this file URL has expired")
        return expires

    # ---- CDN upload tokens ----
    def cdn_token(self, key_id: str, namespace: str, *, expires: int) -> str:
        if not _KEY_ID.fullmatch(key_id):
            raise ValueError("invalid key id")
        names.check_namespace(namespace)
        signature = self.sign(CDN_PREFIX, key_id, namespace, str(expires))
        return f"{CDN_PREFIX}.{key_id}.{namespace}.{expires}.{signature}"

    def check_cdn_token(self, token: str, *, now: float | None = None) -> CdnGrant:
        parts = token.split(".")
        if len(parts) != 5 or parts[0] != CDN_PREFIX or not parts[3].isdigit():
            raise BadSignature("malformed upload token")
        _, key_id, namespace, expires_text, signature = parts
        self.check(signature, CDN_PREFIX, key_id, namespace, expires_text)
        if int(expires_text) <= (time.time() if now is None else now):
            raise Expired("upload token expired")
        return CdnGrant(key_id=key_id, namespace=namespace, expires=int(expires_text))

    # ---- realtime tokens ----
    def realtime_token(self, key_id: str, apps: tuple[str, ...], *, expires: int) -> str:
        if not _KEY_ID.fullmatch(key_id):
            raise ValueError("invalid key id")
        if not apps or len(apps) > MAX_TOKEN_APPS or not all(map(is_app_name, apps)):
            raise ValueError("invalid app list")
        joined = ",".join(apps)
        signature = self.sign(REALTIME_PREFIX, key_id, str(expires), joined)
        return f"{REALTIME_PREFIX}.{key_id}.{expires}.{joined}.{signature}"

    def check_realtime_token(self, token: str, *, now: float | None = None) -> RealtimeGrant:
        parts = token.split(".")
        if len(parts) != 5 or parts[0] != REALTIME_PREFIX or not parts[2].isdigit():
            raise BadSignature("malformed realtime token")
        _, key_id, expires_text, joined, signature = parts
        self.check(signature, REALTIME_PREFIX, key_id, expires_text, joined)
        if int(expires_text) <= (time.time() if now is None else now):
            raise Expired("realtime token expired")
        return RealtimeGrant(
            key_id=key_id, expires=int(expires_text), apps=tuple(joined.split(","))
        )


def is_realtime_token(token: str) -> bool:
    return token.startswith(REALTIME_PREFIX + ".")
