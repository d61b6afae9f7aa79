"""An object store in an S3 bucket (AWS or any S3-compatible server), on aiobotocore.

Big files go up as multipart uploads with bounded concurrency, so memory holds at most
``max_concurrency`` parts; small ones as one streamed PutObject. Every failure leaves this
module as one of our errors (see ``s3_error``), so the daemon can tell retry from dead letter.

Longer than most modules on purpose: the write path (checksums, conditional commit, their
probes and fallbacks) and the error classes of AWS, s3proxy and MinIO are one unit, and
splitting them would spread one store's behaviour across files.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import hashlib
import re
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from handlers.errors import (
    AkisnapError,
    BucketMissingError,
    ObjectMissingError,
    StoreAccessDeniedError,
    StoreConfigError,
    StoreCredentialsError,
    StoreMisconfiguredError,
    StoreUnavailableError,
    StoreUnreachableError,
)
from handlers.secrets import scrub_secrets
from handlers.stores.base import (
    CHUNK_BYTES,
    FeatureReport,
    ObjectInfo,
    check_key,
    ignore_feature,
)
from handlers.stores.conditional import (
    CONDITIONAL_MODES,
    PROBE_PREFIX,
    ConditionalWrites,
    put_unless_present,
)
from handlers.stores.factory import S3Options
from handlers.stores.multipart import MultipartUpload, part_size

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.literals import ServerSideEncryptionType
    from types_aiobotocore_s3.type_defs import (
        CreateMultipartUploadRequestTypeDef,
        PutObjectRequestTypeDef,
    )

SPOOL_DIR_NAME = "akisnap-spool"
USER_AGENT = "akisnap (aiobotocore)"
ADDRESSING_STYLES = frozenset({"path", "virtual", "auto"})
SSE_MODES = frozenset({"AES256", "aws:kms", "aws:kms:dsse"})
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# Error codes by what they mean for us, in the spellings of AWS, s3proxy and MinIO. HEAD answers
# carry no body, so only a status code.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "NoSuchUpload",
        "IncompleteBody",
        "XMinioServerNotInitialized",
    }
)
# The bytes that arrived are not the bytes sent (or the digest we computed): resend.
_CHECKSUM_MISMATCH_CODES = frozenset(
    {"BadDigest", "XAmzContentSHA256Mismatch", "XAmzContentChecksumMismatch", "InvalidDigest"}
)
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidSecurity",
        "InvalidClientTokenId",
    }
)
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem"})
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_BUCKET_MISSING_CODES = frozenset({"NoSuchBucket"})
_MISCONFIGURED_CODES = frozenset(
    {"InvalidBucketName", "PermanentRedirect", "AuthorizationHeaderMalformed", "NotImplemented"}
)
# What a server says when it does not implement x-amz-checksum-sha256.
_CHECKSUM_REFUSALS = frozenset({"InvalidRequest", "NotImplemented", "InvalidArgument"})
# Failures to connect at all (not a slow or dropped answer): the endpoint is unreachable.
_UNREACHABLE = (
    EndpointConnectionError,
    aiohttp.ClientConnectorError,
    ConnectionRefusedError,
    socket.gaierror,
)
_STORE_EXCEPTIONS = (BotoCoreError, ClientError, aiohttp.ClientError, OSError)


class S3Store:
    """Objects are ``s3://bucket/prefix/<key>``; the client opens on first use, once."""

    def __init__(self, bucket: str, prefix: str, options: S3Options) -> None:
        self._bucket = bucket
        self._prefix = f"{prefix}/" if prefix else ""
        self._options = options
        self._secret = options.secret_key or None
        self._stack: AsyncExitStack | None = None
        self._client: S3Client | None = None
        self._client_lock = asyncio.Lock()
        # None: not tried yet; False: the server refused x-amz-checksum-sha256 once.
        self._sends_checksum: bool | None = None
        self._conditional = ConditionalWrites(options.conditional_writes)
        self._report: FeatureReport = ignore_feature

    @classmethod
    def from_uri(cls, uri: str, options: S3Options) -> S3Store:
        """``s3://bucket`` or ``s3://bucket/some/prefix``; settings are checked here, not later."""
        parts = urlsplit(uri)
        if parts.scheme != "s3" or parts.query or parts.fragment:
            raise StoreConfigError(f"not an S3 store URI: {uri!r} (use s3://bucket/prefix)")
        if not _BUCKET.match(parts.netloc):
            raise StoreConfigError(f"S3 store URI {uri!r} names no valid bucket")
        prefix = parts.path.strip("/")
        if prefix:
            check_key(prefix)
        _check_options(options)
        return cls(parts.netloc, prefix, options)

    @property
    def root_uri(self) -> str:
        return f"s3://{self._bucket}/{self._prefix.rstrip('/')}".rstrip("/")

    @property
    def sends_checksum(self) -> bool | None:
        """Whether the server took ChecksumSHA256 (None until the first upload)."""
        return self._sends_checksum

    @property
    def conditional_writes(self) -> bool | None:
        """Whether commits use If-None-Match (None until the first commit)."""
        return self._conditional.supported

    def watch_features(self, report: FeatureReport) -> None:
        self._report = report

    def spool_dir(self) -> Path:
        spool = self._options.spool_dir or Path(tempfile.gettempdir()) / SPOOL_DIR_NAME
        spool.mkdir(parents=True, exist_ok=True)
        return spool

    def local_path(self, key: str) -> Path | None:
        return None

    async def put_file(self, key: str, path: Path, *, sha256_hex: str) -> bool:
        """One PutObject for small files, a multipart upload for big ones; the file stays.

        True when the server checked the bytes against ``sha256_hex`` (and said so).
        """
        full_key = self._full_key(key)
        with self._translated(f"read {path.name} for upload"):
            size = (await asyncio.to_thread(path.stat)).st_size
        if size < self._options.multipart_threshold_bytes:
            handle = await asyncio.to_thread(path.open, "rb")
            try:
                return await self._put_object(full_key, handle, sha256_hex)
            finally:
                handle.close()
        return await self._put_multipart(full_key, path, size, sha256_hex)

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self._put_object(self._full_key(key), data, hashlib.sha256(data).hexdigest())

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """PutObject with If-None-Match: * where the server honours it (checked once, by a
        probe); else a HEAD first, then the PUT. False when an object was already there."""
        full_key = self._full_key(key)
        client = await self._s3()
        with self._translated(f"put {self._uri(full_key)} if absent"):
            probe_key = self._probe_key()
            if await self._conditional.usable(client, self._bucket, probe_key, self._report):
                request = self._put_request(full_key, data, hashlib.sha256(data).hexdigest())
                return await put_unless_present(client, request)
        if await self.head(key) is not None:
            return False
        await self.put_bytes(key, data)
        return True

    async def get_bytes(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks(key)])

    async def iter_chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        full_key = self._full_key(key)
        client = await self._s3()
        with self._translated(f"get {self._uri(full_key)}"):
            answer = await client.get_object(Bucket=self._bucket, Key=full_key)
        async with answer["Body"] as body:
            while chunk := await self._read_chunk(body, full_key, chunk_bytes):
                yield chunk

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        full_key = self._full_key(key)
        client = await self._s3()
        with self._translated(f"get {self._uri(full_key)}"):
            answer = await client.get_object(
                Bucket=self._bucket, Key=full_key, Range=f"bytes={start}-{start + length - 1}"
            )
        async with answer["Body"] as body:
            return await self._read_chunk(body, full_key, length)

    async def head(self, key: str) -> ObjectInfo | None:
        full_key = self._full_key(key)
        client = await self._s3()
        try:
            with self._translated(f"head {self._uri(full_key)}"):
                answer = await client.head_object(
                    Bucket=self._bucket, Key=full_key, ChecksumMode="ENABLED"
                )
        except ObjectMissingError:
            return None
        return ObjectInfo(
            key,
            answer["ContentLength"],
            answer["LastModified"],
            sha256=_hex_digest(answer.get("ChecksumSHA256")),
        )

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        full_prefix = self._prefix + _check_prefix(prefix)
        client = await self._s3()
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=full_prefix
        )
        page_iter = aiter(pages)
        while True:
            with self._translated(f"list {self._uri(full_prefix)}"):
                page = await anext(page_iter, None)
            if page is None:
                return
            for item in page.get("Contents", []):
                key = item["Key"][len(self._prefix) :]
                yield ObjectInfo(key, item["Size"], item["LastModified"])

    async def delete(self, key: str) -> None:
        full_key = self._full_key(key)
        client = await self._s3()
        with (
            contextlib.suppress(ObjectMissingError),
            self._translated(f"delete {self._uri(full_key)}"),
        ):
            await client.delete_object(Bucket=self._bucket, Key=full_key)

    async def ping(self) -> None:
        """HeadBucket: answers only when the endpoint, the credentials and the bucket are good."""
        client = await self._s3()
        try:
            with self._translated(f"head bucket {self._bucket}"):
                await client.head_bucket(Bucket=self._bucket)
        except ObjectMissingError:
            raise BucketMissingError(f"bucket {self._bucket!r} does not exist") from None

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    # -- uploads --------------------------------------------------------------------------------

    async def _put_object(self, full_key: str, body: bytes | IO[bytes], sha256_hex: str) -> bool:
        """PutObject with ChecksumSHA256 until the server refuses it once; then metadata only.

        The fallback is remembered only after the retry without the checksum succeeded, so an
        unrelated ``InvalidRequest`` does not switch checksums off for good. True when the
        server vouched for the bytes: it took the checksum and answered with the same one.
        """
        client = await self._s3()
        request = self._put_request(full_key, body, sha256_hex)
        with self._translated(f"put {self._uri(full_key)}"):
            if self._sends_checksum is not False:
                vouched = await self._put_checked(client, request, sha256_hex)
                if vouched is not None:
                    return vouched
            _rewind(body)
            await client.put_object(**request)
            if self._sends_checksum is None:
                self._report("checksums", False)
            self._sends_checksum = False
        return False

    async def _put_checked(
        self, client: S3Client, request: PutObjectRequestTypeDef, sha256_hex: str
    ) -> bool | None:
        """The server verifies the bytes against the digest; None if it has no checksums."""
        checked = request.copy()
        checked["ChecksumSHA256"] = _base64_digest(sha256_hex)
        try:
            answer = await client.put_object(**checked)
        except ClientError as exc:
            if self._sends_checksum or _code(exc) not in _CHECKSUM_REFUSALS:
                raise
            return None
        if self._sends_checksum is None:
            self._report("checksums", True)
        self._sends_checksum = True
        return _hex_digest(answer.get("ChecksumSHA256")) == sha256_hex

    def _encrypt(
        self, request: PutObjectRequestTypeDef | CreateMultipartUploadRequestTypeDef
    ) -> None:
        """Server-side encryption on a PUT or a multipart upload, when configured."""
        if self._options.sse:
            request["ServerSideEncryption"] = cast("ServerSideEncryptionType", self._options.sse)
        if self._options.sse_kms_key_id:
            request["SSEKMSKeyId"] = self._options.sse_kms_key_id

    def _put_request(
        self, full_key: str, body: bytes | IO[bytes], sha256_hex: str
    ) -> PutObjectRequestTypeDef:
        request: PutObjectRequestTypeDef = {
            "Bucket": self._bucket,
            "Key": full_key,
            "Body": body,
            "Metadata": {"sha256": sha256_hex},
        }
        self._encrypt(request)
        return request

    async def _put_multipart(self, full_key: str, path: Path, size: int, sha256_hex: str) -> bool:
        """Parts with their SHA-256 until the server refuses checksums; True when it vouched."""
        upload = MultipartUpload(
            client=await self._s3(),
            request=self._create_request(full_key, sha256_hex),
            translated=self._translated,
            part_bytes=part_size(size, self._options.multipart_part_bytes),
            max_concurrency=self._options.max_concurrency,
            checksums=self._sends_checksum is not False,
        )
        try:
            vouched = await upload.run(path, size, sha256_hex)
        except AkisnapError as exc:
            refused = isinstance(exc.__cause__, ClientError) and (
                _code(exc.__cause__) in _CHECKSUM_REFUSALS
            )
            if not (upload.checksums and self._sends_checksum is None and refused):
                raise
            upload = dataclasses.replace(upload, checksums=False)
            vouched = await upload.run(path, size, sha256_hex)
            self._sends_checksum = False
            self._report("checksums", False)
            return vouched
        if upload.checksums and self._sends_checksum is None:
            self._sends_checksum = True
            self._report("checksums", True)
        return vouched

    def _create_request(
        self, full_key: str, sha256_hex: str
    ) -> CreateMultipartUploadRequestTypeDef:
        request: CreateMultipartUploadRequestTypeDef = {
            "Bucket": self._bucket,
            "Key": full_key,
            "Metadata": {"sha256": sha256_hex},
        }
        self._encrypt(request)
        return request

    # -- plumbing -------------------------------------------------------------------------------

    async def _read_chunk(self, body: Any, full_key: str, chunk_bytes: int) -> bytes:
        """Up to chunk_bytes (fewer only at the end): aiohttp hands out much smaller pieces."""
        buffer = bytearray()
        with self._translated(f"read {self._uri(full_key)}"):
            while len(buffer) < chunk_bytes:
                piece: bytes = await body.read(chunk_bytes - len(buffer))
                if not piece:
                    break
                buffer += piece
        return bytes(buffer)

    async def _s3(self) -> S3Client:
        """The one client, made on first use (not in __init__: that has no running loop)."""
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client = await self._open_client()
        return self._client

    async def _open_client(self) -> S3Client:
        options = self._options
        stack = AsyncExitStack()
        try:
            client = await stack.enter_async_context(
                shared_session().create_client(
                    "s3",
                    endpoint_url=options.endpoint_url or None,
                    region_name=options.region or None,
                    aws_access_key_id=options.access_key or None,
                    aws_secret_access_key=self._secret,
                    config=client_config(options),
                )
            )
        except ValueError as exc:
            raise StoreConfigError(
                f"cannot open S3 client: {scrub_secrets(str(exc), [self._secret])}"
            ) from None
        self._stack = stack
        return client

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """Turn botocore/aiohttp/OS errors raised inside into our errors."""
        try:
            yield
        except _STORE_EXCEPTIONS as exc:
            raise s3_error(exc, action, secret=self._secret) from exc

    def _full_key(self, key: str) -> str:
        return self._prefix + check_key(key)

    def _probe_key(self) -> str:
        return f"{self._prefix}{PROBE_PREFIX}{uuid.uuid4().hex}"

    def _uri(self, full_key: str) -> str:
        return f"s3://{self._bucket}/{full_key}"


@functools.cache
def shared_session() -> AioSession:
    """One botocore session per process: it caches the S3 model, which takes ~0.3 s to load."""
    return get_session()


def client_config(options: S3Options) -> AioConfig:
    """Few retries (the daemon retries whole requests) and checksums only when S3 needs them.

    botocore's default since 1.36 adds CRC32 trailers to every upload (aws-chunked), which
    many S3-compatible servers refuse; ``when_required`` keeps requests plain. A fixed
    User-Agent: botocore otherwise rebuilds and sanitises a long one on every call, about
    2 ms of CPU per call, a third of a small snapshot's S3 cost.
    """
    return AioConfig(
        user_agent=USER_AGENT,
        s3={"addressing_style": options.addressing_style},
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=options.connect_timeout_seconds,
        read_timeout=options.read_timeout_seconds,
        max_pool_connections=max(10, options.max_concurrency),
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


def s3_error(exc: BaseException, action: str, *, secret: str | None = None) -> AkisnapError:
    """The one mapping from botocore/aiohttp failures to our errors, by what they mean."""
    if isinstance(exc, ClientError):
        return _client_error(exc, action, secret)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StoreCredentialsError(
            f"{action}: no usable S3 credentials (set access and secret key)"
        )
    if isinstance(exc, ParamValidationError):
        return StoreConfigError(f"{action}: {scrub_secrets(str(exc), [secret])}")
    detail = scrub_secrets(str(exc) or type(exc).__name__, [secret])
    if isinstance(exc, _UNREACHABLE) and not isinstance(exc, ReadTimeoutError):
        return StoreUnreachableError(f"{action}: {detail}")
    return StoreUnavailableError(f"{action}: {detail}")


def _client_error(exc: ClientError, action: str, secret: str | None) -> AkisnapError:
    code = _code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    message = scrub_secrets(exc.response.get("Error", {}).get("Message", ""), [secret])
    detail = f"{action}: {code or status} {message}".strip()
    kind = _meaning(code, status)
    if kind is ObjectMissingError:
        return ObjectMissingError(f"{action}: no such object")
    return kind(detail)


def _meaning(code: str, status: int) -> type[AkisnapError]:
    """Which of our errors an S3 error code (or, without one, an HTTP status) means."""
    if code in _TRANSIENT_CODES or code in _CHECKSUM_MISMATCH_CODES:
        return StoreUnavailableError
    if code in _CREDENTIAL_CODES:
        return StoreCredentialsError
    if code in _BUCKET_MISSING_CODES:
        return BucketMissingError
    if _is_kms(code):  # before the 404 and 403 rules: MinIO answers kms:KeyNotFound with 404
        denied = "denied" in code.lower()
        return StoreAccessDeniedError if denied else StoreMisconfiguredError
    if code in _MISCONFIGURED_CODES or status == 501:
        return StoreMisconfiguredError
    if code in _MISSING_CODES or status == 404:
        return ObjectMissingError
    if code in _DENIED_CODES or status == 403:
        return StoreAccessDeniedError
    # Anything else (5xx, 429, a code this list does not know): retried, and when the
    # attempts run out dead-lettered as retryable, never refused as bad input.
    return StoreUnavailableError


def _is_kms(code: str) -> bool:
    return code.lower().startswith("kms") or "kmskey" in code.lower()


def _check_options(options: S3Options) -> None:
    if options.addressing_style not in ADDRESSING_STYLES:
        raise StoreConfigError(
            f"S3 addressing style {options.addressing_style!r} is not one of path, virtual, auto"
        )
    if bool(options.access_key) != bool(options.secret_key):
        raise StoreConfigError("set both the S3 access key and the secret key, or neither")
    if options.sse and options.sse not in SSE_MODES:
        raise StoreConfigError(
            f"S3 server-side encryption {options.sse!r} is not one of AES256, aws:kms"
        )
    if options.max_concurrency < 1:
        raise StoreConfigError("S3 max_concurrency must be at least 1")
    if options.conditional_writes not in CONDITIONAL_MODES:
        raise StoreConfigError(
            f"S3 conditional writes {options.conditional_writes!r} is not one of auto, off"
        )


def _check_prefix(prefix: str) -> str:
    """A listing prefix may end in '/' or part-way through a name, but must stay inside."""
    stem = prefix.rstrip("/")
    if prefix.startswith("/") or (stem and not check_key(stem)):
        raise StoreConfigError(f"refused listing prefix {prefix!r}: not a plain relative prefix")
    return prefix


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _base64_digest(sha256_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


def _hex_digest(checksum: str | None) -> str | None:
    """A whole-object SHA-256 the server reports, as hex; None for none or a composite
    (``…-N``: a checksum of part checksums, not of the bytes)."""
    if not checksum or "-" in checksum:
        return None
    try:
        return base64.b64decode(checksum, validate=True).hex()
    except ValueError:
        return None


def _rewind(body: bytes | IO[bytes]) -> None:
    if not isinstance(body, bytes):
        body.seek(0)
