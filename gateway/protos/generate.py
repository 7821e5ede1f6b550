"""Generate the gateway's Python gRPC code from the vendored protos (`make protos`).

The protos under `gateway/protos/` are copied unchanged from their upstream projects, each with
its licence. The code generated from them lives in `kubefal_gateway/_generated/` and is
committed, so installing the gateway runs no protoc and `make unit` builds nothing; the test
`tests/gateway/test_generated_protos.py` regenerates into a temporary folder and fails when the
committed code has drifted from the protos or from the pinned grpcio-tools.

    python gateway/protos/generate.py [OUTPUT_DIR]
"""

from __future__ import annotations

import pathlib
import re
import sys

from grpc_tools import protoc

PROTOS = pathlib.Path(__file__).resolve().parent
PACKAGE = "kubefal_gateway._generated"
DEFAULT_OUTPUT = PROTOS.parent / "kubefal_gateway" / "_generated"
SOURCES = {"keda": ["externalscaler.proto"]}
"""Vendored proto folders and the files generated from each."""


def generate(output: pathlib.Path = DEFAULT_OUTPUT) -> list[pathlib.Path]:
    """Write `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` for every vendored proto into `output`."""
    output.mkdir(parents=True, exist_ok=True)
    written: list[pathlib.Path] = []
    for folder, files in SOURCES.items():
        include = PROTOS / folder
        for name in files:
            status = protoc.main(
                [
                    "protoc",
                    f"-I{include}",
                    f"--python_out={output}",
                    f"--pyi_out={output}",
                    f"--grpc_python_out={output}",
                    str(include / name),
                ]
            )
            if status != 0:
                raise RuntimeError(f"protoc failed on {include / name} (exit {status})")
            stem = name.removesuffix(".proto")
            grpc_module = output / f"{stem}_pb2_grpc.py"
            # grpc's generator imports its sibling as a top-level module; make it package-relative.
            text = re.sub(
                rf"^import {stem}_pb2 as ",
                f"from {PACKAGE} import {stem}_pb2 as ",
                grpc_module.read_text(),
                flags=re.MULTILINE,
            )
            grpc_module.write_text(text)
            written += [output / f"{stem}_pb2.py", output / f"{stem}_pb2.pyi", grpc_module]
    return written


if __name__ == "__main__":
    for path in generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT):
        print(path)  # noqa: T201
