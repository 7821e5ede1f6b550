"""Does a live child still carry every field the operator renders?

Server-side apply owns exactly the fields in the applied manifest, so drift means: some
rendered field is missing from the live object or has another value. The live object also
holds fields the API server defaulted (``clusterIP``, probe ``successThreshold``, ...)
and fields other managers own; those are not drift. Lists must match in length, element by
element, so an added or removed container, env var or port is drift too. Quantities are
compared by value ("0.5" equals "500m"), as the API server normalises them.

Checking this locally lets the operator react to every child event without an API call
unless something actually changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubefal_api import machines


def _same_scalar(desired: Any, live: Any) -> bool:
    if bool(desired == live):
        return True
    if isinstance(desired, str) and isinstance(live, str | int):
        try:
            return machines.parse_quantity(desired) == machines.parse_quantity(str(live))
        except ValueError:
            return False
    return False


def _empty(value: Any) -> bool:
    return isinstance(value, dict | list) and not value


def is_subset(desired: Any, live: Any) -> bool:
    """True when every field of ``desired`` is present with the same value in ``live``."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        for key, value in desired.items():
            if key not in live:
                if _empty(value):  # the API server omits empty lists and maps
                    continue
                return False
            if not is_subset(value, live[key]):
                return False
        return True
    if isinstance(desired, Sequence) and not isinstance(desired, str):
        if not isinstance(live, Sequence) or isinstance(live, str) or len(desired) != len(live):
            return False
        return all(is_subset(item, other) for item, other in zip(desired, live, strict=True))
    return _same_scalar(desired, live)


def drifted(desired: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """True when ``live`` lost or changed a field of ``desired`` (metadata and spec)."""
    wanted = {key: value for key, value in desired.items() if key not in {"apiVersion", "kind"}}
    return not is_subset(wanted, live)
