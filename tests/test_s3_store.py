"""S3Store against the real S3-compatible server that `make services` starts (see .services.env)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from handlers.errors import (
    BucketMissingError,
    EnvironmentFaultError,
    ObjectMissingError,
    StoreConfigError,
    StoreCredentialsError,
    StoreMisconfiguredError,
    StoreUnavailableError,
    StoreUnreachableError,
    WriteNotVerifiedError,
)
from handlers.stores import ObjectStore, S3Options, open_store
from handlers.stores.s3 import S3Store, part_size
from tests import support
from tests.support import S3_SERVERS, s3_root, service_env

MIB = 1024 * 1024

MakeStore = Callable[..., Awaitable[S3Store]]


@pytest.fixture(scope="session", params=S3_SERVERS)
def s3_server(request: pytest.FixtureRequest) -> str:
    """Each real S3 server in turn (its name in the test id)."""
    server: str = request.param
    return server


@pytest.fixture(scope="session")
def s3_options(s3_server: str) -> S3Options:
    """Small multipart sizes so a few MiB exercise the multipart path."""
    return support.s3_options(
        s3_server, multipart_threshold_bytes=5 * MIB, multipart_part_bytes=5 * MIB,
        max_concurrency=2, connect_timeout_seconds=5, read_timeout_seconds=30,
    )  # fmt: skip


@pytest.fixture
async def make_store(s3_options: S3Options, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """Stores under a fresh uuid prefix; their objects are deleted and clients closed after."""
    made: list[S3Store] = []
    base = f"tests/{uuid.uuid4().hex}"

    async def make(uri: str | None = None, **changes: Any) -> S3Store:
        options = replace(s3_options, spool_dir=tmp_path / "spool", **changes)
        store = S3Store.from_uri(uri or s3_root(base), options)
        made.append(store)
        return store

    yield make
    for store in made:
        try:
            async for info in store.list(""):
                await store.delete(info.key)
        except (EnvironmentFaultError, StoreConfigError, StoreUnavailableError):
            pass
        await store.close()


def write_random(path: Path, size: int) -> str:
    """Write size random bytes; return their SHA-256 (hex)."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


async def stored_sha256(store: S3Store, key: str) -> str:
    """The hex digest the store kept in the object's user metadata."""
    client = await store._s3()
    answer = await client.head_object(Bucket=store._bucket, Key=store._full_key(key))
    return answer["Metadata"]["sha256"]


async def open_uploads(store: S3Store, key: str) -> list[str]:
    """Upload ids of multipart uploads still open for key (should be none after put_file)."""
    client = await store._s3()
    answer = await client.list_multipart_uploads(Bucket=store._bucket, Prefix=store._full_key(key))
    return [upload["UploadId"] for upload in answer.get("Uploads", [])]


async def test_from_factory_is_an_object_store(s3_options: S3Options) -> None:
    """open_store('s3://…') gives an S3Store that satisfies the ObjectStore protocol."""
    store = open_store(s3_root("some/prefix"), s3_options)
    try:
        assert isinstance(store, S3Store)
        assert isinstance(store, ObjectStore)
        assert store.root_uri == s3_root("some/prefix")
        await store.ping()
    finally:
        await store.close()


async def test_put_get_head_list_delete_round_trip(make_store: MakeStore) -> None:
    """Bytes come back identical, head/list see them with relative keys, delete removes them."""
    store = await make_store()
    await store.put_bytes("snapshots/c1/s1/part-00000.parquet", b"part zero")
    await store.put_bytes("snapshots/c1/s1.metadata.json", b'{"id": "s1"}')
    await store.put_bytes("snapshots/c2/s2.metadata.json", b"{}")

    assert await store.get_bytes("snapshots/c1/s1/part-00000.parquet") == b"part zero"
    info = await store.head("snapshots/c1/s1.metadata.json")
    assert info is not None
    assert (info.key, info.size) == ("snapshots/c1/s1.metadata.json", 12)
    assert info.last_modified.tzinfo is not None
    listed = {i.key: i.size async for i in store.list("snapshots/c1/")}
    assert listed == {"snapshots/c1/s1/part-00000.parquet": 9, "snapshots/c1/s1.metadata.json": 12}
    assert {i.key async for i in store.list("snapshots/c")} >= {"snapshots/c2/s2.metadata.json"}

    await store.delete("snapshots/c1/s1.metadata.json")
    await store.delete("snapshots/c1/s1.metadata.json")
    assert await store.head("snapshots/c1/s1.metadata.json") is None
    assert [i.key async for i in store.list("snapshots/c1/")] == [
        "snapshots/c1/s1/part-00000.parquet"
    ]


async def test_put_file_below_threshold_is_one_put(make_store: MakeStore, tmp_path: Path) -> None:
    """A small file goes up whole, with its SHA-256 in metadata, and the local file stays."""
    store = await make_store()
    path = tmp_path / "small.bin"
    sha = write_random(path, 3 * MIB + 17)
    await store.put_file("parts/small.bin", path, sha256_hex=sha)

    assert hashlib.sha256(await store.get_bytes("parts/small.bin")).hexdigest() == sha
    assert await stored_sha256(store, "parts/small.bin") == sha
    assert store.sends_checksum is not None
    assert path.exists()


async def test_put_file_above_threshold_is_multipart(make_store: MakeStore, tmp_path: Path) -> None:
    """A file over the threshold goes up in 5 MiB parts and reads back bit for bit."""
    store = await make_store()
    path = tmp_path / "big.bin"
    size = 12 * MIB + 12345
    sha = write_random(path, size)
    assert await store.put_file("parts/big.bin", path, sha256_hex=sha) is True  # vouched

    info = await store.head("parts/big.bin")
    assert info is not None
    assert info.size == size
    assert info.sha256 is None  # a checksum of part checksums: verify reads such parts back
    assert hashlib.sha256(await store.get_bytes("parts/big.bin")).hexdigest() == sha
    assert await stored_sha256(store, "parts/big.bin") == sha
    assert await open_uploads(store, "parts/big.bin") == []


async def test_failed_multipart_upload_is_aborted(
    make_store: MakeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a part fails, the error surfaces as ours and the upload is aborted, not left open."""
    from handlers.stores import multipart

    store = await make_store()
    path = tmp_path / "big.bin"
    sha = write_random(path, 11 * MIB)
    real_read = multipart.read_part

    def flaky_read(path: Path, offset: int, size: int, whole: Any) -> tuple[bytes, bytes]:
        if offset > 0:
            raise ConnectionResetError("disk went away")
        return real_read(path, offset, size, whole)

    monkeypatch.setattr(multipart, "read_part", flaky_read)
    with pytest.raises(StoreUnavailableError, match="disk went away"):
        await store.put_file("parts/broken.bin", path, sha256_hex=sha)
    assert await open_uploads(store, "parts/broken.bin") == []
    assert await store.head("parts/broken.bin") is None


async def test_wrong_sha256_is_refused_by_the_server(make_store: MakeStore, tmp_path: Path) -> None:
    """The server checks ChecksumSHA256: a file that does not match its digest is not stored."""
    store = await make_store()
    path = tmp_path / "small.bin"
    write_random(path, 1000)
    await store.put_bytes("first.bin", b"teaches the store that checksums work")
    assert store.sends_checksum is True
    # s3proxy says BadDigest, MinIO XAmzContentChecksumMismatch: both resent (transient).
    with pytest.raises(StoreUnavailableError, match=r"BadDigest|XAmzContentChecksumMismatch"):
        await store.put_file("parts/liar.bin", path, sha256_hex=hashlib.sha256(b"x").hexdigest())
    assert await store.head("parts/liar.bin") is None


async def test_checksum_refusal_falls_back_to_metadata(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that refuses ChecksumSHA256 is asked once; then the digest goes in metadata only."""
    store = await make_store()
    client = await store._s3()
    real_put = client.put_object
    sent: list[bool] = []

    async def refusing_put(**request: Any) -> Any:
        sent.append("ChecksumSHA256" in request)
        if "ChecksumSHA256" in request:
            error = {"Error": {"Code": "NotImplemented", "Message": "no checksums here"}}
            raise ClientError(error, "PutObject")  # type: ignore[arg-type]
        return await real_put(**request)

    monkeypatch.setattr(client, "put_object", refusing_put)
    await store.put_bytes("a.txt", b"alpha")
    await store.put_bytes("b.txt", b"beta")

    assert sent == [True, False, False]
    assert store.sends_checksum is False
    assert await store.get_bytes("a.txt") == b"alpha"
    assert await stored_sha256(store, "b.txt") == hashlib.sha256(b"beta").hexdigest()


async def test_list_follows_pages(make_store: MakeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """list() walks every ListObjectsV2 page (two keys a page here), keys relative to the root."""
    store = await make_store()
    keys = {f"many/{i:02d}.bin" for i in range(5)}
    for key in keys:
        await store.put_bytes(key, b"x")
    client = await store._s3()
    real_get_paginator = client.get_paginator

    def small_pages(name: str) -> Any:
        paginator = real_get_paginator(name)  # type: ignore[call-overload]
        real_paginate = paginator.paginate
        monkeypatch.setattr(
            paginator,
            "paginate",
            lambda **kw: real_paginate(**kw, PaginationConfig={"PageSize": 2}),
        )
        return paginator

    monkeypatch.setattr(client, "get_paginator", small_pages)
    assert {info.key async for info in store.list("many/")} == keys


async def test_iter_chunks_streams_in_order(make_store: MakeStore) -> None:
    """iter_chunks yields full chunks (the last may be short) that join to the object."""
    store = await make_store()
    data = os.urandom(3 * MIB + MIB // 2)
    await store.put_bytes("stream.bin", data)

    chunks = [chunk async for chunk in store.iter_chunks("stream.bin", chunk_bytes=MIB)]
    assert [len(c) for c in chunks] == [MIB, MIB, MIB, MIB // 2]
    assert b"".join(chunks) == data


async def test_missing_objects(make_store: MakeStore) -> None:
    """head of a missing key is None; get and iter_chunks raise ObjectMissingError."""
    store = await make_store()
    assert await store.head("nope/missing.bin") is None
    with pytest.raises(ObjectMissingError):
        await store.get_bytes("nope/missing.bin")
    with pytest.raises(ObjectMissingError):
        async for _ in store.iter_chunks("nope/missing.bin"):
            pass
    await store.delete("nope/missing.bin")
    assert [info async for info in store.list("nope/")] == []


async def test_wrong_secret_key_is_access_denied(make_store: MakeStore) -> None:
    """A bad secret is refused credentials (an environment fault), never in the message."""
    secret = "not-the-secret-" + uuid.uuid4().hex
    store = await make_store(secret_key=secret)
    with pytest.raises(StoreCredentialsError) as caught:
        await store.put_bytes("denied.txt", b"x")
    assert secret not in str(caught.value)
    with pytest.raises(StoreCredentialsError):
        await store.get_bytes("denied.txt")


async def test_missing_bucket_is_an_environment_fault(make_store: MakeStore) -> None:
    """A bucket that does not exist is the environment's fault (wait for it), for ping and put."""
    store = await make_store(uri=f"s3://akisnap-missing-{uuid.uuid4().hex[:12]}/x")
    with pytest.raises(BucketMissingError):
        await store.ping()
    with pytest.raises(BucketMissingError):
        await store.put_bytes("a.txt", b"x")


async def test_server_side_encryption_errors_by_meaning(
    make_store: MakeStore, s3_server: str
) -> None:
    """SSE on a server without it (s3proxy: NotImplemented) and a KMS key the server does not
    have (MinIO: kms:KeyNotFound, with a 404) are the store's misconfiguration, an environment
    fault, never a missing object; with a key MinIO has, objects round-trip encrypted."""
    missing_key = await make_store(sse="aws:kms", sse_kms_key_id="akisnap-no-such-key")
    with pytest.raises(StoreMisconfiguredError):
        await missing_key.put_bytes("kms.txt", b"x")
    if s3_server == "minio":
        key_id = service_env("AKISNAP_MINIO_KMS_KEY_ID")
        for sse, key in (("AES256", None), ("aws:kms", key_id)):
            store = await make_store(sse=sse, sse_kms_key_id=key)
            await store.put_bytes("sse.txt", b"secret payload")
            assert await store.get_bytes("sse.txt") == b"secret payload"
    else:
        store = await make_store(sse="AES256")
        with pytest.raises(StoreMisconfiguredError, match="NotImplemented"):
            await store.put_bytes("sse.txt", b"x")


@pytest.fixture
async def offline_store(tmp_path: Path) -> AsyncIterator[S3Store]:
    """A store whose endpoint has nothing listening (needs no server)."""
    options = S3Options(
        endpoint_url="http://127.0.0.1:1",
        region="us-east-1",
        access_key="offline",
        secret_key="offline-secret",
        connect_timeout_seconds=1,
        read_timeout_seconds=1,
        spool_dir=tmp_path / "spool",
    )
    store = S3Store.from_uri("s3://offline-bucket/prefix", options)
    yield store
    await store.close()


async def test_unreachable_endpoint_is_an_environment_fault_and_quick(
    offline_store: S3Store,
) -> None:
    """Nothing listening: ping, put and get raise StoreUnreachableError, never hang (the
    bound is a hang guard, far above the 1 s timeouts, not a speed target)."""
    async with asyncio.timeout(60):
        with pytest.raises(StoreUnreachableError):
            await offline_store.ping()
        with pytest.raises(StoreUnreachableError):
            await offline_store.put_bytes("a.txt", b"x")
        with pytest.raises(StoreUnreachableError):
            await offline_store.get_bytes("a.txt")


@pytest.mark.parametrize(
    "key", ["../escape.txt", "a/../../b", "/absolute", "a//b", "./a", "a/./b", "a b", ""]
)
async def test_unsafe_keys_are_refused(offline_store: S3Store, key: str) -> None:
    """Keys that could leave the store's prefix are refused before any request is made."""
    with pytest.raises(StoreConfigError):
        await offline_store.put_bytes(key, b"x")
    with pytest.raises(StoreConfigError):
        await offline_store.head(key)
    with pytest.raises(StoreConfigError):
        async for _ in offline_store.list("../"):
            pass


def test_spool_dir_defaults_under_temp(offline_store: S3Store, tmp_path: Path) -> None:
    """spool_dir is the configured directory, created; without one, akisnap-spool in tmp."""
    assert offline_store.spool_dir() == tmp_path / "spool"
    assert offline_store.spool_dir().is_dir()
    default = S3Store.from_uri("s3://bucket", S3Options()).spool_dir()
    assert default.name == "akisnap-spool"
    assert default.is_dir()


@pytest.mark.parametrize(
    "uri", ["s3://", "s3:///prefix", "s3://Bad_Bucket/x", "s3://bucket/../x", "file:///tmp/x"]
)
def test_bad_uris_are_config_errors(uri: str) -> None:
    """from_uri refuses URIs without a valid bucket or with an escaping prefix."""
    with pytest.raises(StoreConfigError):
        S3Store.from_uri(uri, S3Options())


def test_part_size_respects_s3_limits() -> None:
    """Parts are at least 5 MiB and never more than 10,000 per object."""
    assert part_size(100 * MIB, 1 * MIB) == 5 * MIB
    assert part_size(100 * MIB, 16 * MIB) == 16 * MIB
    assert part_size(1_000_000 * MIB, 16 * MIB) * 10_000 >= 1_000_000 * MIB


async def test_multipart_parts_carry_checksums_and_the_whole_file_is_checked(
    make_store: MakeStore, tmp_path: Path
) -> None:
    """A file whose bytes do not hash to the encoder's digest is not stored (the upload is
    aborted); the server checked every part of the one that is."""
    store = await make_store()
    path = tmp_path / "big.bin"
    write_random(path, 11 * MIB)
    with pytest.raises(WriteNotVerifiedError, match="changed between encoding and upload"):
        await store.put_file("parts/changed.bin", path, sha256_hex=hashlib.sha256(b"x").hexdigest())
    assert await store.head("parts/changed.bin") is None
    assert await open_uploads(store, "parts/changed.bin") == []


async def test_multipart_checksum_refusal_falls_back_to_plain_parts(
    make_store: MakeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that refuses ChecksumAlgorithm on a first (multipart) upload: the upload goes
    again without checksums, the store remembers, and the part is not vouched for."""
    store = await make_store()
    client = await store._s3()
    real_create = client.create_multipart_upload
    asked: list[bool] = []

    async def refusing_create(**request: Any) -> Any:
        asked.append("ChecksumAlgorithm" in request)
        if "ChecksumAlgorithm" in request:
            error = {"Error": {"Code": "NotImplemented", "Message": "no checksums here"}}
            raise ClientError(error, "CreateMultipartUpload")  # type: ignore[arg-type]
        return await real_create(**request)

    monkeypatch.setattr(client, "create_multipart_upload", refusing_create)
    seen: list[tuple[str, bool]] = []
    store.watch_features(lambda feature, supported: seen.append((feature, supported)))
    path = tmp_path / "big.bin"
    sha = write_random(path, 11 * MIB)
    assert await store.put_file("parts/plain.bin", path, sha256_hex=sha) is False
    assert asked == [True, False]
    assert store.sends_checksum is False and seen == [("checksums", False)]
    assert hashlib.sha256(await store.get_bytes("parts/plain.bin")).hexdigest() == sha
