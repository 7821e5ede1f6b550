"""`/data` per namespace, as `fal files` and `fal.sync_dir` see it; no HTTP here.

Runners mount their namespace's share of one volume at `/data` (`<data root>/<namespace>`,
rendered by the operator); the gateway mounts the whole volume at `--data-root` and serves
fal's files API over it (routes.py). Every path comes from a caller, so `resolve` is the one
way from a caller's path to a file: `/data/a/b`, `data/a/b` and `a/b` all name
`<root>/<namespace>/a/b`; `..`, `.`, empty, NUL and over-long segments are refused, and the
resolved path (symlinks followed) must stay inside the namespace's directory. A zip unpacked by
`sync_dir` gets the same checks per entry (no zip-slip, no symlink entries) and limits on its
entry count and unpacked size. Writes go to a temporary file and are renamed into place.

Multipart uploads (`fal files upload` of files over 10 MB) are directories under the
namespace's `/data` until completed; a caller who never completes or cancels one would leave
it there forever, so a namespace may have at most `max_open_uploads` of them at once (429
beyond), and `sweep` (run by the storage sweeper, `--storage-sweep-interval`) removes uploads
untouched for `upload_ttl` seconds, and temporary files a crashed request left, as old.

All methods block (file I/O); the HTTP layer runs them in the default thread pool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import itertools
import json
import mmap
import os
import pathlib
import shutil
import stat
import tempfile
import threading
import time
import zipfile
from typing import IO

from kubefal_gateway.storage import forms, names

MAX_PATH_CHARS = 1024
MAX_DEPTH = 32
HIDDEN_PREFIX = ".kubefal-"
"""Temporary files and multipart uploads in progress, never listed."""


class DataError(Exception):
    pass


class DataNotFound(DataError):
    pass


class DataInvalid(DataError):
    pass


class DataTooLarge(DataError):
    pass


class DataBusy(DataError):
    """Too many multipart uploads open in the namespace (429)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 1024**3
    max_unzip_bytes: int = 4 * 1024**3
    max_unzip_entries: int = 20_000
    max_open_uploads: int = 64
    """Multipart uploads a namespace may have open at once (`--data-max-open-uploads`)."""
    upload_ttl: float = 86400.0
    """Seconds an open upload may stay untouched before the sweep removes it
    (`--data-upload-ttl`); also the age at which a left-over temporary file is removed."""
    max_parts: int = 10_000
    """Highest part number of a multipart upload (`--data-max-parts`)."""


def relative_parts(raw: str) -> list[str]:
    """A caller's path as segments relative to `/data`; DataInvalid for anything unsafe."""
    if len(raw) > MAX_PATH_CHARS or "\x00" in raw or "\\" in raw:
        raise DataInvalid("invalid path")
    text = raw.strip("/")
    if text == "data":
        text = ""
    elif text.startswith("data/"):
        text = text[len("data/") :]
    parts = [part for part in text.split("/") if part]
    if len(parts) > MAX_DEPTH or any(part in (".", "..") for part in parts):
        raise DataInvalid("paths may not contain '.' or '..' segments")
    if any(len(part) > 255 or not part.isprintable() for part in parts):
        raise DataInvalid("invalid path segment")
    if any(part.startswith(HIDDEN_PREFIX) for part in parts):
        # The gateway's own: uploads in progress and temporary files, which the sweep removes.
        raise DataInvalid(f"names starting with {HIDDEN_PREFIX!r} are reserved")
    return parts


class DataFiles:
    def __init__(self, root: pathlib.Path, limits: Limits | None = None) -> None:
        self.root = root.resolve()
        self.limits = limits or Limits()
        self.root.mkdir(parents=True, exist_ok=True)
        # Serializes count-then-create in `begin` within this process; replicas sharing the
        # volume may together exceed the limit by at most one upload each.
        self._begin_lock = threading.Lock()

    # ---- paths ----
    def base(self, namespace: str) -> pathlib.Path:
        base = self.root / names.check_namespace(namespace)
        base.mkdir(exist_ok=True)
        return base

    def resolve(self, namespace: str, raw: str) -> pathlib.Path:
        base = self.base(namespace)
        path = base.joinpath(*relative_parts(raw))
        real = pathlib.Path(os.path.realpath(path))
        if real != base and not real.is_relative_to(base):
            raise DataInvalid("the path leaves /data")
        return path

    def display(self, namespace: str, path: pathlib.Path) -> str:
        relative = path.relative_to(self.base(namespace)).as_posix()
        return "/data" if relative == "." else f"/data/{relative}"

    # ---- reads ----
    def listing(self, namespace: str, raw: str) -> list[dict[str, object]]:
        path = self.resolve(namespace, raw)
        if not path.exists():
            return []  # as fal does: fsspec's put lists a directory it is about to create
        targets = sorted(path.iterdir()) if path.is_dir() else [path]
        entries = []
        for target in targets:
            if target.name.startswith(HIDDEN_PREFIX):
                continue
            info = target.lstat()
            entries.append(
                {
                    "path": self.display(namespace, target),
                    "size": info.st_size,
                    "is_file": stat.S_ISREG(info.st_mode),
                    "updated_time": datetime.datetime.fromtimestamp(
                        info.st_mtime, datetime.UTC
                    ).isoformat(),
                }
            )
        return entries

    def file(self, namespace: str, raw: str) -> pathlib.Path:
        path = self.resolve(namespace, raw)
        if not path.is_file():
            raise DataNotFound(f"{self.display(namespace, path)} is not a file")
        return path

    def check_hash(self, namespace: str, raw: str, expected: str) -> bool:
        """`fal.sync_dir`'s check: the directory holds the `.fal_hash` it uploaded last."""
        marker = self.resolve(namespace, raw) / ".fal_hash"
        with contextlib.suppress(OSError):
            return marker.read_text().strip() == expected.strip()
        return False

    # ---- writes ----
    def _temporary(self, namespace: str) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self.base(namespace), prefix=HIDDEN_PREFIX + "tmp-")

    def place(self, namespace: str, raw: str, source: IO[bytes], size: int) -> None:
        """Copy `size` bytes of `source` to the path (atomically replacing a file there)."""
        target = self.resolve(namespace, raw)
        if target == self.base(namespace) or target.is_dir():
            raise DataInvalid("the target is a directory")
        if size > self.limits.max_file_bytes:
            raise DataTooLarge(f"the file exceeds {self.limits.max_file_bytes} bytes")
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = self._temporary(namespace)
        try:
            with os.fdopen(descriptor, "wb") as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
            os.replace(temporary, target)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def unzip(self, namespace: str, raw: str, source: IO[bytes]) -> None:
        """`fal.sync_dir`: unpack a zip into the directory, each entry checked."""
        target = self.resolve(namespace, raw)
        try:
            archive = zipfile.ZipFile(source)
        except zipfile.BadZipFile:
            raise DataInvalid("the upload is not a zip file") from None
        with archive:
            members = archive.infolist()
            if len(members) > self.limits.max_unzip_entries:
                raise DataTooLarge(f"more than {self.limits.max_unzip_entries} entries")
            if sum(member.file_size for member in members) > self.limits.max_unzip_bytes:
                raise DataTooLarge(f"unpacks to more than {self.limits.max_unzip_bytes} bytes")
            planned = []
            for member in members:
                if stat.S_ISLNK(member.external_attr >> 16):
                    raise DataInvalid(f"{member.filename!r}: links are not unpacked")
                inside = "/".join(relative_parts(self.display(namespace, target)))
                destination = self.resolve(namespace, f"{inside}/{member.filename}")
                if not destination.is_relative_to(target):
                    raise DataInvalid(f"{member.filename!r} leaves the target directory")
                planned.append((member, destination))
            target.mkdir(parents=True, exist_ok=True)
            for member, destination in planned:
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as entry:
                    self.place(namespace, self.display(namespace, destination), entry, 0)

    def delete(self, namespace: str, raw: str) -> None:
        path = self.resolve(namespace, raw)
        if path == self.base(namespace):
            raise DataInvalid("/data itself cannot be deleted")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            raise DataNotFound(f"{self.display(namespace, path)} does not exist")

    def rename(self, namespace: str, raw: str, destination_raw: str) -> None:
        source = self.resolve(namespace, raw)
        destination = self.resolve(namespace, destination_raw)
        base = self.base(namespace)
        if base in (source, destination) or not source.exists():
            raise DataInvalid("cannot rename /data itself or a missing path")
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, destination)

    # ---- multipart (`fal files upload` of files over 10 MB) ----
    def _upload_dir(self, namespace: str, upload_id: str) -> pathlib.Path:
        return self.base(namespace) / f"{HIDDEN_PREFIX}upload-{names.check_id(upload_id)}"

    def open_uploads(self, namespace: str) -> int:
        prefix = f"{HIDDEN_PREFIX}upload-"
        with os.scandir(self.base(namespace)) as entries:
            return sum(1 for entry in entries if entry.name.startswith(prefix))

    def begin(self, namespace: str, raw: str) -> str:
        self.resolve(namespace, raw)
        upload_id = names.new_id()
        directory = self._upload_dir(namespace, upload_id)
        with self._begin_lock:
            if self.open_uploads(namespace) >= self.limits.max_open_uploads:
                raise DataBusy(
                    f"{self.limits.max_open_uploads} multipart uploads are already open in this"
                    " namespace: complete or cancel one, or wait until abandoned ones expire"
                )
            directory.mkdir()
        (directory / "target").write_text(json.dumps(raw))
        return upload_id

    def sweep(self, now: float | None = None) -> int:
        """Remove uploads untouched for `upload_ttl` and temporary files as old, in every
        namespace; return how many were removed. Activity on an upload (a part) touches it."""
        cutoff = (time.time() if now is None else now) - self.limits.upload_ttl
        removed = 0
        with os.scandir(self.root) as namespaces:
            bases = [entry.path for entry in namespaces if entry.is_dir(follow_symlinks=False)]
        for base in bases:
            with contextlib.suppress(OSError), os.scandir(base) as entries:
                stale = [
                    entry
                    for entry in entries
                    if entry.name.startswith(HIDDEN_PREFIX)
                    and entry.stat(follow_symlinks=False).st_mtime < cutoff
                ]
            for entry in stale:
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed += 1
        return removed

    def _upload(self, namespace: str, raw: str, upload_id: str) -> pathlib.Path:
        try:
            directory = self._upload_dir(namespace, upload_id)
            if json.loads((directory / "target").read_text()) != raw:
                raise DataNotFound("upload not found")
        except (OSError, ValueError, names.InvalidName):
            raise DataNotFound("upload not found, finished or cancelled") from None
        return directory

    def part(
        self, namespace: str, raw: str, upload_id: str, number: int, source: IO[bytes], size: int
    ) -> str:
        directory = self._upload(namespace, raw, upload_id)
        if not 1 <= number <= self.limits.max_parts:
            raise DataInvalid(f"part numbers go from 1 to {self.limits.max_parts}")
        if size > self.limits.max_file_bytes:
            raise DataTooLarge(f"the part exceeds {self.limits.max_file_bytes} bytes")
        digest = hashlib.md5(usedforsecurity=False)
        with (directory / f"{number:09d}.part").open("wb") as out:
            while chunk := source.read(1024 * 1024):
                digest.update(chunk)
                out.write(chunk)
        os.utime(directory)  # activity: the sweep keeps an upload that is still receiving parts
        return digest.hexdigest()

    def complete(
        self, namespace: str, raw: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> str:
        """Join the parts in order; return the MD5 of the whole file (fal compares it)."""
        directory = self._upload(namespace, raw, upload_id)
        numbers = sorted(number for number, _ in parts)
        for previous, number in itertools.pairwise(numbers):
            if previous == number:
                raise DataInvalid(f"part {number} is listed twice")
        files = [directory / f"{number:09d}.part" for number in numbers]
        if not files or not all(file.is_file() for file in files):
            raise DataInvalid("a listed part was not uploaded")
        if sum(file.stat().st_size for file in files) > self.limits.max_file_bytes:
            raise DataTooLarge(f"the file exceeds {self.limits.max_file_bytes} bytes")
        digest = hashlib.md5(usedforsecurity=False)
        joined = directory / "joined"
        with joined.open("wb") as out:
            for file in files:
                with file.open("rb") as part:
                    while chunk := part.read(1024 * 1024):
                        digest.update(chunk)
                        out.write(chunk)
        with joined.open("rb") as source:
            self.place(namespace, raw, source, joined.stat().st_size)
        shutil.rmtree(directory, ignore_errors=True)
        return digest.hexdigest()

    def cancel(self, namespace: str, raw: str, upload_id: str) -> None:
        shutil.rmtree(self._upload(namespace, raw, upload_id), ignore_errors=True)


def form_file(path: pathlib.Path, content_type: str, field: str = "file_upload") -> tuple[int, int]:
    """The byte range of the file field `field` in a multipart/form-data body stored at
    `path`; DataInvalid when the body is not such a form."""
    delimiter = forms.delimiter(content_type)
    if delimiter is None:
        raise DataInvalid("send the file as multipart/form-data")
    size = path.stat().st_size
    if size == 0:
        raise DataInvalid("empty form")
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as body:
        found = forms.field_range(body, delimiter, field)
    if found is None:
        raise DataInvalid(f"the form has no {field!r} file")
    return found
