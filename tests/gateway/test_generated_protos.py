"""The committed gRPC code is exactly what the pinned grpcio-tools generates from the protos.

Like the CRD's golden test: edit a vendored proto or bump grpcio-tools without `make protos`,
and this fails with the file that differs.
"""

from __future__ import annotations

import importlib.util
import pathlib

PROTOS = pathlib.Path(__file__).resolve().parents[2] / "gateway" / "protos"


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("generate_protos", PROTOS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_generated_code_matches_a_fresh_generation(tmp_path: pathlib.Path) -> None:
    generator = _generator()
    fresh = generator.generate(tmp_path)  # type: ignore[attr-defined]
    committed_dir = generator.DEFAULT_OUTPUT  # type: ignore[attr-defined]
    assert fresh, "the generator wrote nothing"
    for path in fresh:
        committed = committed_dir / path.name
        assert committed.exists(), f"{committed} is missing: run `make protos`"
        assert committed.read_text() == path.read_text(), f"{committed} drifted: `make protos`"
    generated_names = {path.name for path in fresh}
    stray = {p.name for p in committed_dir.glob("*_pb2*")} - generated_names
    assert not stray, f"generated files without a proto: {sorted(stray)}"


def test_every_vendored_proto_carries_its_licence() -> None:
    for folder in (path for path in PROTOS.iterdir() if path.is_dir()):
        assert list(folder.glob("*.proto")), f"{folder} holds no proto"
        assert (folder / "LICENSE").exists(), f"{folder} has no LICENSE"
