"""Realtime tokens: what `fal_client.realtime()` (default `use_jwt=True`) fetches and then
sends as `?fal_jwt_token=` on the WebSocket.

fal_client asks `POST {REST}/tokens/` with its API key and `{"allowed_apps": [<app name>],
"token_expiration": <seconds>}`; the token it gets back is short-lived (capped by
`--realtime-token-max-ttl`), names the apps it may open, and names the API key it was issued
to, whose rights are checked again when the WebSocket opens: the key must still exist and not
be revoked, and for a private app its namespaces must include the app's. So a token never
grants more than its key, and a browser can hold one without holding the key.
"""

from __future__ import annotations

from kubefal_api import apikeys
from kubefal_gateway import apps, auth, errors
from kubefal_gateway.storage import signing


def issue(
    signer: signing.Signer,
    record: apikeys.KeyRecord,
    *,
    body: object,
    now: float,
    max_ttl: float,
) -> str:
    """A token for the apps named in fal_client's request body; BadRequest for a bad body."""
    if not isinstance(body, dict):
        raise errors.BadRequest("Send a JSON object with 'allowed_apps' and 'token_expiration'")
    allowed = body.get("allowed_apps")
    if (
        not isinstance(allowed, list)
        or not 1 <= len(allowed) <= signing.MAX_TOKEN_APPS
        or not all(isinstance(name, str) and signing.is_app_name(name) for name in allowed)
    ):
        raise errors.BadRequest(
            f"allowed_apps must list 1 to {signing.MAX_TOKEN_APPS} app names (DNS labels)"
        )
    ttl = body.get("token_expiration", 120)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise errors.BadRequest("token_expiration must be a positive number of seconds")
    expires = int(now + min(float(ttl), max_ttl))
    return signer.realtime_token(record.id, tuple(dict.fromkeys(allowed)), expires=expires)


def authorize(
    keys: auth.KeyStore, signer: signing.Signer, *, token: str, app: apps.AppConfig
) -> apikeys.KeyRecord | None:
    """Admit a WebSocket carrying a realtime token for `app`: 401 for a bad or expired token
    or a revoked key, 403 for an app the token (or its key) does not cover."""
    if app.auth is apps.AuthMode.PUBLIC:
        return None
    try:
        grant = signer.check_realtime_token(token)
    except signing.Expired:
        raise errors.MissingCredentials("Realtime token expired: fetch a new one") from None
    except signing.BadSignature:
        raise errors.MissingCredentials("Invalid realtime token") from None
    record = keys.records.get(grant.key_id)
    if record is None or record.revoked:
        raise errors.MissingCredentials("The realtime token's API key is revoked or unknown")
    if not record.allows_scope(apikeys.SCOPE_APPS):
        raise errors.Forbidden(f"API key {record.id} may not call apps (a storage-only key)")
    if app.name not in grant.apps:
        raise errors.Forbidden(f"This realtime token does not allow app {app.name!r}")
    if app.auth is apps.AuthMode.PRIVATE and not record.allows_namespace(app.namespace):
        raise errors.Forbidden(f"This API key is not allowed to call apps in {app.namespace!r}")
    keys.admit(record)
    return record
