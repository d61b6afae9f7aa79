"""One multipart upload of a local file, with a SHA-256 on every part for the server to check.

The file is read once, in order, by one reader: each part is hashed (its checksum goes with it)
and so is the whole file, which must match the digest the encoder computed, so the parts the
server checked are exactly the bytes that were encoded. Up to ``max_concurrency`` parts are in
memory and on the wire at once: reading part N+1 overlaps sending part N. When the server
answers the completion with the checksum of the part checksums we expect, it has vouched for
every byte, and nothing needs reading back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from handlers.errors import WriteNotVerifiedError, first_cause

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import (
        CompletedPartTypeDef,
        CreateMultipartUploadRequestTypeDef,
    )

MIN_PART_BYTES = 5 * 1024 * 1024  # S3 refuses smaller parts (except the last)
MAX_PARTS = 10_000  # S3's limit on parts per upload

ABORT_ERRORS = (BotoCoreError, ClientError, aiohttp.ClientError, OSError)
Translated = Callable[[str], AbstractContextManager[None]]


def part_size(size: int, wanted: int) -> int:
    """The wanted part size, raised to S3's 5 MiB minimum and to fit in 10,000 parts."""
    return max(wanted, MIN_PART_BYTES, math.ceil(size / MAX_PARTS))


def read_part(path: Path, offset: int, size: int, whole: Any) -> tuple[bytes, bytes]:
    """Blocking (run in a thread): a part's bytes and their SHA-256; feeds the whole-file hash."""
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    whole.update(data)
    return data, hashlib.sha256(data).digest()


@dataclass
class MultipartUpload:
    client: S3Client
    request: CreateMultipartUploadRequestTypeDef
    translated: Translated
    part_bytes: int
    max_concurrency: int
    checksums: bool
    _digests: dict[int, bytes] = field(default_factory=dict, init=False)

    @property
    def _where(self) -> str:
        return f"s3://{self.request['Bucket']}/{self.request['Key']}"

    async def run(self, path: Path, size: int, sha256_hex: str) -> bool:
        """Create, send parts, complete; abort on any failure so no parts linger (and cost).
        True when the server vouched for every byte."""
        request = self.request.copy()
        if self.checksums:
            request["ChecksumAlgorithm"] = "SHA256"
        with self.translated(f"multipart upload {self._where}"):
            created = await self.client.create_multipart_upload(**request)
        upload_id = created["UploadId"]
        try:
            parts = await self._send_parts(upload_id, path, size, sha256_hex)
            with self.translated(f"multipart upload {self._where}"):
                answer = await self.client.complete_multipart_upload(
                    Bucket=self.request["Bucket"],
                    Key=self.request["Key"],
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            await asyncio.shield(self._abort(upload_id))
            raise
        return self.checksums and answer.get("ChecksumSHA256") == self._composite(len(parts))

    async def _send_parts(
        self, upload_id: str, path: Path, size: int, sha256_hex: str
    ) -> list[CompletedPartTypeDef]:
        slots = asyncio.Semaphore(self.max_concurrency)
        whole = hashlib.sha256()
        tasks: list[asyncio.Task[CompletedPartTypeDef]] = []
        try:
            async with asyncio.TaskGroup() as group:
                for number, offset in enumerate(range(0, size, self.part_bytes), start=1):
                    await slots.acquire()
                    try:
                        with self.translated(f"read {path.name} for upload"):
                            data, digest = await asyncio.to_thread(
                                read_part, path, offset, self.part_bytes, whole
                            )
                    except BaseException:
                        slots.release()
                        raise
                    self._digests[number] = digest
                    tasks.append(
                        group.create_task(self._send(upload_id, number, data, digest, slots))
                    )
        except BaseExceptionGroup as errors:
            raise first_cause(errors) from None
        if whole.hexdigest() != sha256_hex:
            raise WriteNotVerifiedError(
                f"{path.name} changed between encoding and upload (SHA-256 differs)"
            )
        return [task.result() for task in tasks]

    async def _send(
        self, upload_id: str, number: int, data: bytes, digest: bytes, slots: asyncio.Semaphore
    ) -> CompletedPartTypeDef:
        try:
            extra = {"ChecksumSHA256": _b64(digest)} if self.checksums else {}
            with self.translated(f"upload part {number} of {self._where}"):
                answer = await self.client.upload_part(
                    Bucket=self.request["Bucket"],
                    Key=self.request["Key"],
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                    **extra,  # type: ignore[arg-type]
                )
        finally:
            slots.release()
        done: CompletedPartTypeDef = {"PartNumber": number, "ETag": answer["ETag"]}
        if self.checksums:
            done["ChecksumSHA256"] = _b64(digest)
        return done

    def _composite(self, count: int) -> str:
        """S3's checksum of a multipart object: SHA-256 of the part digests, then ``-N``."""
        joined = b"".join(self._digests[number] for number in range(1, count + 1))
        return f"{_b64(hashlib.sha256(joined).digest())}-{count}"

    async def _abort(self, upload_id: str) -> None:
        """Best effort: the upload's own error matters more than a failed abort."""
        with contextlib.suppress(*ABORT_ERRORS):
            await self.client.abort_multipart_upload(
                Bucket=self.request["Bucket"], Key=self.request["Key"], UploadId=upload_id
            )


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
