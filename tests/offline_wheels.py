"""Real wheels built in a test's temp dir, so pip installs with no network.

pip is pointed at them with its own environment variables (``PIP_NO_INDEX=1``,
``PIP_FIND_LINKS``): the install is the real ``python -m venv`` + ``pip install`` path.
"""

from __future__ import annotations

import base64
import hashlib
import pathlib
import zipfile

PACKAGE = "kubefal_probe_package"


def _record_line(*, name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _record_line(*, name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(
    directory: pathlib.Path,
    *,
    package: str = PACKAGE,
    version: str = "1.0",
    value: str = "installed by the runner",
) -> pathlib.Path:
    """A pure-Python wheel of ``package`` (PEP 427 layout, written directly)."""
    distribution = f"{package}-{version}.dist-info"
    files = {
        f"{package}/__init__.py": f"VALUE = {value!r}\n".encode(),
        f"{distribution}/METADATA": (
            f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: {version}\n"
        ).encode(),
        f"{distribution}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: kubefal-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "\n".join(
        [
            *(_record_line(name=name, data=data) for name, data in files.items()),
            f"{distribution}/RECORD,,",
        ]
    )
    wheel_path = directory / f"{package}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{distribution}/RECORD", record + "\n")
    return wheel_path


def offline_pip_env(wheels: pathlib.Path) -> dict[str, str]:
    """pip's variables for installing only from ``wheels``."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}
