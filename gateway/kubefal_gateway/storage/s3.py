"""The S3-compatible backend (AWS S3, MinIO, Ceph RGW, GCS interop, versitygw, s3proxy).

Through boto3 (request signing, retries and multipart are the library's, not ours), run in the
default thread pool so the event loop never blocks on the network. `--storage
s3://bucket[/prefix]?endpoint=URL&region=R&addressing=path|virtual` selects it; credentials
come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, IRSA).
Signatures are always SigV4 (boto3 otherwise presigns SigV2 on custom endpoints in us-east-1,
which some servers refuse). A write of up to `PART_BYTES` is one PutObject; a longer one is a
multipart upload of parts of at least `PART_BYTES`, aborted when the stream fails or exceeds
its limit, so nothing partial becomes visible. One part is uploaded while the next is received
(at most three parts of an upload in memory, received as chunks of at least
`blobs.MIN_CHUNK_BYTES`, `blobs.coalesce`), and a read keeps the next `READ_BYTES` in flight
while the caller sends the current one, so the two network legs overlap (bench/storage.py).
Connection failures map to StoreUnavailable after `CONNECT_RETRIES` attempts of
`CONNECT_TIMEOUT` seconds each, quota errors to StoreFull.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Mapping
from typing import Any, TypeVar, cast

import boto3
import botocore.config
import botocore.exceptions

from kubefal_gateway.storage import blobs

PART_BYTES = 8 * 1024 * 1024
READ_BYTES = 1024 * 1024
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
CONNECT_RETRIES = 2
_FULL_CODES = frozenset(
    {"QuotaExceeded", "EntityTooLarge", "InsufficientStorage", "XMinioStorageFull"}
)
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})

T = TypeVar("T")


def _classify(error: Exception) -> blobs.BlobError:
    if isinstance(error, botocore.exceptions.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in _MISSING_CODES:
            return blobs.BlobNotFound(code)
        if code in _FULL_CODES:
            return blobs.StoreFull(f"object store refused the write: {code}")
        return blobs.StoreUnavailable(f"object store error: {code or error}")
    return blobs.StoreUnavailable(f"object store unreachable: {type(error).__name__}")


_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError)


class S3BlobStore:
    kind = "s3"

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError("--storage must look like s3://bucket[/prefix]?endpoint=URL")
        query = dict(urllib.parse.parse_qsl(parsed.query))
        endpoint = query.get("endpoint") or None
        addressing = query.get("addressing", "path" if endpoint else "virtual")
        if addressing not in ("path", "virtual"):
            raise ValueError("addressing must be path or virtual")
        config = botocore.config.Config(
            signature_version="s3v4",
            s3=cast(Any, {"addressing_style": addressing}),
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"max_attempts": CONNECT_RETRIES, "mode": "standard"},
            max_pool_connections=32,
        )
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=query.get("region", "us-east-1"), config=config
        )
        return cls(client, parsed.netloc, parsed.path)

    def _key(self, key: str) -> str:
        return self.prefix + blobs.check_key(key)

    async def _call(self, function: Callable[..., T], /, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, functools.partial(function, **kwargs))
        except _ERRORS as error:
            raise _classify(error) from error

    async def write(
        self, key: str, chunks: AsyncIterable[bytes], *, limit: int, meta: Mapping[str, str]
    ) -> int:
        s3_key = self._key(key)
        common = {
            "Bucket": self.bucket,
            "Key": s3_key,
            "Metadata": dict(meta),
            "ContentType": meta.get("type", "application/octet-stream"),
        }
        pending: list[bytes] = []
        pending_bytes = 0
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        uploading: asyncio.Future[dict[str, Any]] | None = None  # one part in flight

        async def send_part(body: bytes) -> None:
            nonlocal uploading
            assert upload_id is not None
            if uploading is not None:
                parts.append(await uploading)
            number = len(parts) + 1
            uploading = asyncio.ensure_future(self._upload_part(s3_key, upload_id, number, body))

        try:
            async for chunk in blobs.coalesce(chunks):
                size += len(chunk)
                if size > limit:
                    raise blobs.BlobTooLarge(f"the file exceeds {limit} bytes")
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= PART_BYTES:
                    if upload_id is None:
                        created = await self._call(self.client.create_multipart_upload, **common)
                        upload_id = str(created["UploadId"])
                    body, pending, pending_bytes = b"".join(pending), [], 0
                    await send_part(body)
            if upload_id is None:
                await self._call(self.client.put_object, Body=b"".join(pending), **common)
                return size
            if pending:
                await send_part(b"".join(pending))
            if uploading is not None:
                parts.append(await uploading)
                uploading = None
            await self._call(
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=s3_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
            upload_id = None
            return size
        finally:
            if uploading is not None:
                uploading.cancel()
                with contextlib.suppress(BaseException):
                    await uploading
            if upload_id is not None:
                # On failure, the bucket's lifecycle rule for incomplete uploads cleans up.
                with contextlib.suppress(blobs.BlobError):
                    await self._call(
                        self.client.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=s3_key,
                        UploadId=upload_id,
                    )

    async def _upload_part(
        self, s3_key: str, upload_id: str, number: int, body: bytes
    ) -> dict[str, Any]:
        """Upload part ``number`` of a multipart upload; its entry for the completing call."""
        answer = await self._call(
            self.client.upload_part,
            Bucket=self.bucket,
            Key=s3_key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def stat(self, key: str) -> blobs.BlobInfo:
        answer = await self._call(self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        meta = {str(k).lower(): str(v) for k, v in (answer.get("Metadata") or {}).items()}
        return blobs.BlobInfo(key=key, size=int(answer["ContentLength"]), meta=meta)

    async def read(
        self, key: str, *, chunk_size: int = READ_BYTES, start: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        if length == 0:
            return
        ranged: dict[str, str] = {}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            ranged["Range"] = f"bytes={start}-{end}"
        answer = await self._call(
            self.client.get_object, Bucket=self.bucket, Key=self._key(key), **ranged
        )
        body = answer["Body"]
        # The Range header bounds the body: read it to its end.
        reads = blobs.read_ahead(
            body.read, chunk_size=chunk_size, length=None, errors=_ERRORS, classify=_classify
        )
        try:
            async with contextlib.aclosing(reads):
                async for chunk in reads:
                    yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        await self._call(self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    async def list(self, prefix: str) -> AsyncIterator[str]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._call(self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents") or ():
                yield str(item["Key"])[len(self.prefix) :]
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    async def close(self) -> None:
        self.client.close()
