"""A container registry on 127.0.0.1 for e2e tests: ``crane registry serve``.

go-containerregistry's ``crane`` is built once with ``go install`` from the Go module proxy
(the version pinned below) and cached in ``~/.cache/kubefal/tools/crane-<version>/`` like the
control plane's binaries (``KUBEFAL_CRANE`` points at another binary). The registry keeps
blobs in a folder of the test, speaks plain HTTP and listens on loopback only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator

from e2e.cluster import free_port
from testkit import processes, waiting

CRANE_VERSION = "v0.22.1"
CRANE_MODULE = "github.com/google/go-containerregistry/cmd/crane"


def crane_binary() -> pathlib.Path:
    """The cached crane, built first if missing (about 10-50 s with a cold Go cache)."""
    override = os.environ.get("KUBEFAL_CRANE")
    if override:
        return pathlib.Path(override)
    folder = pathlib.Path.home() / ".cache" / "kubefal" / "tools" / f"crane-{CRANE_VERSION}"
    binary = folder / "crane"
    if binary.is_file():
        return binary
    if shutil.which("go") is None:
        raise RuntimeError("Go is required to build crane (apt-get install golang)")
    folder.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"GOBIN": str(folder), "CGO_ENABLED": "0"}
    subprocess.run(
        ["go", "install", "-trimpath", "-ldflags=-s -w", f"{CRANE_MODULE}@{CRANE_VERSION}"],
        env=env,
        check=True,
        capture_output=True,
        timeout=900,
    )
    return binary


@dataclasses.dataclass(frozen=True)
class Registry:
    address: str
    """``127.0.0.1:<port>``."""
    process: subprocess.Popen[bytes]
    log: pathlib.Path

    def has(self, repository: str, tag: str) -> bool:
        """True when the registry serves that manifest."""
        request = urllib.request.Request(
            f"http://{self.address}/v2/{repository}/manifests/{tag}",
            method="HEAD",
            headers={
                "Accept": "application/vnd.oci.image.manifest.v1+json, "
                "application/vnd.docker.distribution.manifest.v2+json"
            },
        )
        try:
            with _no_proxy().open(request, timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def tags(self, repository: str) -> list[str]:
        import json

        try:
            with _no_proxy().open(
                f"http://{self.address}/v2/{repository}/tags/list", timeout=5
            ) as response:
                return list(json.load(response).get("tags") or [])
        except OSError:
            return []


def _no_proxy() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextlib.contextmanager
def serving(folder: pathlib.Path) -> Iterator[Registry]:
    """A registry on a free 127.0.0.1 port, blobs in ``folder``; stopped on exit."""
    (folder / "blobs").mkdir(parents=True, exist_ok=True)  # crane does not create it
    address = f"127.0.0.1:{free_port()}"
    log = folder / "registry.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(crane_binary()),
                "registry",
                "serve",
                "--address",
                address,
                "--disk",
                str(folder / "blobs"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    registry = Registry(address=address, process=process, log=log)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the registry exited:\n{log.read_text()[-2000:]}")
        try:
            with _no_proxy().open(f"http://{address}/v2/", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        waiting.wait_for(up, timeout=60, description=f"the registry on {address}")
        yield registry
    finally:
        processes.stop(process, timeout=10)
