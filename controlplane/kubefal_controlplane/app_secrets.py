"""``fal secrets set|list|unset`` on the control plane: one Secret per namespace
(``kubefal-secrets``, one key per secret, the times they were set in an annotation), which the
operator gives the app's runners as environment variables, as fal's secrets are.

Why a module of its own: one concern with its own object; the other RPCs are in
:mod:`kubefal_controlplane.service`.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Final

import isolate_proto
from kubernetes.client.exceptions import ApiException

from kubefal_api import naming, v1alpha1
from kubefal_controlplane import auth, errors, mapping
from kubefal_controlplane.rpc import (
    APP_SECRETS_NAME,
    CONFLICT_RETRIES,
    ControllerBase,
    environment,
    rpc,
    utc_now,
)

LABEL_APP_SECRETS: Final = f"{v1alpha1.GROUP}/fal-secrets"
ANNOTATION_SECRET_TIMES: Final = f"{v1alpha1.GROUP}/secret-times"
"""On that Secret: JSON object, secret name -> RFC 3339 time it was last set."""
SECRET_NAME_PATTERN: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,252}$")
MAX_SECRET_VALUE_BYTES: Final = 256 * 1024


def check_secret(name: str, value: str | None) -> None:
    """Refuse what cannot become an environment variable of a runner (INVALID_ARGUMENT naming
    the field): a name that is not one, a value over the size limit or holding a NUL byte,
    which no process environment can carry (runner containers, and ``kubefal run``'s runner
    process, would fail to start)."""
    if not SECRET_NAME_PATTERN.fullmatch(name):
        raise errors.invalid_argument(
            "name",
            f"{name[:64]!r} is not an environment variable name "
            "(letters, digits and '_', not starting with a digit, at most 253 characters)",
        )
    if value is None:
        return
    if len(value.encode("utf-8")) > MAX_SECRET_VALUE_BYTES:
        raise errors.invalid_argument("value", f"larger than {MAX_SECRET_VALUE_BYTES} bytes")
    if "\0" in value:
        raise errors.invalid_argument(
            "value", "holds a NUL byte, which an environment variable cannot"
        )


class SecretsRpcs(ControllerBase):
    """``fal secrets``'s RPCs (mixed into :class:`kubefal_controlplane.service.Controller`)."""

    @rpc
    def SetSecret(
        self, request: isolate_proto.SetSecretRequest, caller: auth.Caller
    ) -> isolate_proto.SetSecretResponse:
        value = request.value if request.HasField("value") else None
        check_secret(request.name, value)
        env = environment(request)
        namespace = self._secret_namespace(caller, env)
        for attempt in range(CONFLICT_RETRIES):
            try:
                self._write_secret(namespace, request.name, value)
                break
            except ApiException as error:
                if error.status != 409 or attempt == CONFLICT_RETRIES - 1:
                    raise
        verb = "set" if value is not None else "unset"
        self.cluster.record_event(
            namespace=namespace,
            involved={"apiVersion": "v1", "kind": "Secret", "name": APP_SECRETS_NAME},
            reason="SecretSet" if value is not None else "SecretUnset",
            message=f"API key {caller.key_id} {verb} secret {request.name} (fal secrets {verb})",
        )
        return isolate_proto.SetSecretResponse()

    def _write_secret(self, namespace: str, name: str, value: str | None) -> None:
        secret = self.cluster.get_secret(namespace, APP_SECRETS_NAME)
        now = utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")
        if secret is None:
            if value is None:
                raise errors.not_found(f"secret {name} not found in namespace {namespace!r}")
            self.cluster.create_secret(
                namespace,
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "Opaque",
                    "metadata": {
                        "name": APP_SECRETS_NAME,
                        "namespace": namespace,
                        "labels": {
                            LABEL_APP_SECRETS: "true",
                            naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
                        },
                        "annotations": {ANNOTATION_SECRET_TIMES: json.dumps({name: now})},
                    },
                    "data": {name: base64.b64encode(value.encode()).decode()},
                },
            )
            return
        data = dict(secret.get("data") or {})
        meta = secret["metadata"]
        annotations = dict(meta.get("annotations") or {})
        times = _secret_times(annotations)
        if value is None:
            if name not in data:
                raise errors.not_found(f"secret {name} not found in namespace {namespace!r}")
            data.pop(name)
            times.pop(name, None)
        else:
            data[name] = base64.b64encode(value.encode()).decode()
            times[name] = now
        annotations[ANNOTATION_SECRET_TIMES] = json.dumps(times, sort_keys=True)
        secret["data"] = data
        meta["annotations"] = annotations
        self.cluster.replace_secret(namespace, APP_SECRETS_NAME, secret)

    @rpc
    def ListSecrets(
        self, request: isolate_proto.ListSecretsRequest, caller: auth.Caller
    ) -> isolate_proto.ListSecretsResponse:
        env = environment(request)
        scope = self._scope(caller, env)
        namespaces = scope if scope is not None else self._secret_namespaces_everywhere()
        listed: list[isolate_proto.Secret] = []
        for namespace in sorted(namespaces):
            if not caller.allows(namespace):
                continue
            secret = self.cluster.get_secret(namespace, APP_SECRETS_NAME)
            if secret is None:
                continue
            times = _secret_times((secret.get("metadata") or {}).get("annotations") or {})
            for name in sorted(secret.get("data") or {}):
                entry = isolate_proto.Secret(name=name, environment_name=namespace)
                created = mapping.timestamp(times.get(name))
                if created is not None:
                    entry.created_time.CopyFrom(isolate_proto.timestamp_from_datetime(created))
                listed.append(entry)
        return isolate_proto.ListSecretsResponse(secrets=listed)

    def _secret_namespaces_everywhere(self) -> tuple[str, ...]:
        # Every namespace, not a cluster-wide list of Secrets: listing Secrets would need the
        # right to read every Secret of the cluster; ListSecrets reads only kubefal-secrets.
        return self.cluster.list_namespace_names()


def _secret_times(annotations: Mapping[str, str]) -> dict[str, str]:
    try:
        times = json.loads(annotations.get(ANNOTATION_SECRET_TIMES, "{}"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in times.items()} if isinstance(times, dict) else {}
