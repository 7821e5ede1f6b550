"""A real S3-compatible server for the storage tests: s3proxy (filesystem backend) on 127.0.0.1.

The jar (s3proxy 4.1.0, jar-with-dependencies, 55 MB) comes from Maven Central once and is kept
in `$KUBEFAL_HOME` or `~/.cache/kubefal/` (like the control-plane binaries); its SHA-1 is
checked against the `.sha1` Maven publishes next to it. It runs on the machine's Java 17.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import time

import httpx

from testkit import processes
from testkit.ports import free_port

VERSION = "4.1.0"
JAR_URL = (
    "https://repo1.maven.org/maven2/org/gaul/s3proxy/"
    f"{VERSION}/s3proxy-{VERSION}-jar-with-dependencies.jar"
)
ACCESS_KEY = "kubefal-test"
SECRET_KEY = "kubefal-test-secret-0123456789"
READY_TIMEOUT = 60.0


def cache_dir() -> pathlib.Path:
    home = os.environ.get("KUBEFAL_HOME")
    return pathlib.Path(home) if home else pathlib.Path.home() / ".cache" / "kubefal"


def jar_path() -> pathlib.Path:
    """The cached jar, fetched from Maven Central the first time."""
    path = cache_dir() / f"s3proxy-{VERSION}.jar"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with httpx.Client(timeout=300, follow_redirects=True) as client:
        expected = client.get(JAR_URL + ".sha1").raise_for_status().text.split()[0]
        partial = path.with_suffix(".part")
        digest = hashlib.sha1()
        with client.stream("GET", JAR_URL) as response, partial.open("wb") as out:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                digest.update(chunk)
                out.write(chunk)
    if digest.hexdigest() != expected:
        partial.unlink()
        raise RuntimeError(f"s3proxy jar checksum mismatch: {digest.hexdigest()} != {expected}")
    partial.replace(path)
    return path


class S3Proxy:
    """One s3proxy process; `endpoint` is its http://127.0.0.1:<port>."""

    def __init__(self, workdir: pathlib.Path) -> None:
        if shutil.which("java") is None:
            raise RuntimeError("s3proxy needs Java (17+) on PATH")
        self.workdir = workdir
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.data = workdir / "s3-data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.properties = workdir / "s3proxy.properties"
        self.properties.write_text(
            "\n".join(
                [
                    f"s3proxy.endpoint={self.endpoint}",
                    "s3proxy.authorization=aws-v2-or-v4",
                    f"s3proxy.identity={ACCESS_KEY}",
                    f"s3proxy.credential={SECRET_KEY}",
                    "jclouds.provider=filesystem",
                    f"jclouds.filesystem.basedir={self.data}",
                    "",
                ]
            )
        )
        self.log = workdir / "s3proxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Proxy:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["java", "-jar", str(jar_path()), "--properties", str(self.properties)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"s3proxy exited:\n{self.log.read_text()[-3000:]}")
            try:
                httpx.get(self.endpoint, timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"s3proxy not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            processes.stop(self.process, timeout=20)

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def create_bucket(self, bucket: str) -> None:
        import boto3
        import botocore.config

        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(
                signature_version="s3v4", s3={"addressing_style": "path"}
            ),
        )
        client.create_bucket(Bucket=bucket)
        client.close()
