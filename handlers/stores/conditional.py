"""Conditional writes (PutObject with ``If-None-Match: *``): the commit that never overwrites.

S3 (since 2024) and most compatible servers refuse the PUT with 412 when the key exists, so a
snapshot's metadata file is written at most once, by one writer, in one call. Some servers
refuse the header (501, 400) and some ignore it silently and overwrite, so before relying on
it a store probes once: PUT a scratch object twice with the condition; only a 412 on the
second PUT proves the server honours it. Where it does not, the commit is a HEAD and then a
PUT (one more call, and a small window in which two writers of the same request race).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from handlers.errors import StoreUnavailableError
from handlers.stores.base import FeatureReport

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import PutObjectRequestTypeDef

PROBE_PREFIX = "_akisnap/probe-"
CONDITIONAL_MODES = frozenset({"auto", "off"})
# What the probe's second PUT carries. Tests set it to None to play a server that ignores the
# header: the real server then answers 200 to the second PUT, as such a server does.
PROBE_SECOND_CONDITION: str | None = "*"
_REFUSED_STATUSES = frozenset({400, 501})
_PRECONDITION_FAILED = 412
_CONFLICT = 409  # S3: another conditional write to the key is in progress; try again


class ConditionalWrites:
    """Whether this store's server honours If-None-Match: found once, then remembered."""

    def __init__(self, mode: str) -> None:
        self.supported: bool | None = False if mode == "off" else None
        self._mode = mode
        self._reported = False
        self._lock: asyncio.Lock | None = None

    async def usable(
        self, client: S3Client, bucket: str, probe_key: str, report: FeatureReport
    ) -> bool:
        if self.supported is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self.supported is None:
                    self.supported = await probe(client, bucket, probe_key)
        if not self._reported:
            self._reported = True
            report("conditional_writes", self.supported)
        return self.supported


async def put_unless_present(client: S3Client, request: PutObjectRequestTypeDef) -> bool:
    """One conditional PutObject; False when the key already held an object."""
    conditional = request.copy()
    conditional["IfNoneMatch"] = "*"
    try:
        await client.put_object(**conditional)
    except ClientError as exc:
        status = _status(exc)
        if status == _PRECONDITION_FAILED:
            return False
        if status == _CONFLICT:
            raise StoreUnavailableError(
                f"put {request['Key']}: a concurrent conditional write is in progress"
            ) from exc
        raise
    return True


async def probe(client: S3Client, bucket: str, key: str) -> bool:
    """True only when the server refused an overwrite with 412. The scratch object is removed."""
    try:
        if not await _put_probe(client, bucket, key, "*"):
            return False
        try:
            await _put_probe(client, bucket, key, PROBE_SECOND_CONDITION)
        except ClientError as exc:
            if _status(exc) == _PRECONDITION_FAILED:
                return True
            raise
        return False  # the second PUT overwrote: the server ignores the header
    finally:
        with contextlib.suppress(ClientError, OSError):
            await client.delete_object(Bucket=bucket, Key=key)


async def _put_probe(client: S3Client, bucket: str, key: str, condition: str | None) -> bool:
    """False when the server refuses the header itself (it does not implement it)."""
    try:
        if condition is None:
            await client.put_object(Bucket=bucket, Key=key, Body=b"probe")
        else:
            await client.put_object(Bucket=bucket, Key=key, Body=b"probe", IfNoneMatch=condition)
    except ClientError as exc:
        if _status(exc) in _REFUSED_STATUSES:
            return False
        raise
    return True


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
