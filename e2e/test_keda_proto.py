"""The vendored `externalscaler.proto` is byte for byte the one in the pinned KEDA module.

`make testbin` copies KEDA's proto out of the KEDA module at `KEDA_VERSION`
(e2e/versions.env); bumping KEDA without re-vendoring fails here.
"""

from __future__ import annotations

import pathlib

from e2e import cluster

VENDORED = (
    pathlib.Path(__file__).resolve().parents[1] / "gateway" / "protos" / "keda"
) / "externalscaler.proto"


def test_vendored_keda_proto_matches_the_pinned_keda_module() -> None:
    upstream = cluster.testbin_dir() / "externalscaler.proto"
    assert VENDORED.read_bytes() == upstream.read_bytes(), (
        "gateway/protos/keda/externalscaler.proto differs from KEDA's: copy it, then make protos"
    )
