"""Containment: collection ids, source URIs and restores stay where they belong.

A collection id can only name one directory under ``snapshots/``; a source URI is judged after
percent-decoding and resolving ``..`` and symlinks, against the store, the exports root and the
allow-list (a root's name as a mere string prefix does not count); an object key can never
leave the store's root; and a restore writes the one file asked for (through a temporary file
beside it) and nothing else, even when it fails.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.catalog import Catalog
from handlers.create import SnapshotCreator
from handlers.errors import (
    AkisnapError,
    InvalidRequestError,
    SourceError,
    SourceNotAllowedError,
    StoreConfigError,
)
from handlers.job import COLLECTION_ID, InlineSource, SnapshotJob, check_collection_id, check_job
from handlers.layout import metadata_key, part_key, snapshot_prefix
from handlers.metadata import PartInfo, SnapshotMetadata
from handlers.restore import restore_snapshot
from handlers.sources import SourceReader
from handlers.stores import open_store
from handlers.stores.factory import S3Options
from handlers.stores.local import LocalStore
from handlers.stores.s3 import S3Store

BUCKET = "containment"

TRICKY_COLLECTIONS = [
    "..", ".", "../x", "x/..", "a/b", "/etc", "a\\b", "%2e%2e", "%2fetc", "a\x00b", "",
    " x", "x ", "a\nb", "\u202ex", "a\u2215b", "\uff0e\uff0e", "ｐｒｏｄ", "c" * 129, "-x", "_x",
]  # fmt: skip


@given(st.from_regex(COLLECTION_ID, fullmatch=True))
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_valid_collection_id_stays_under_its_prefix(collection: str) -> None:
    """Any id the pattern allows makes keys that stay in snapshots/<id>/ of the store root."""
    root = Path(tempfile.gettempdir()) / "akisnap-containment-root"
    store = LocalStore(root)
    snapshot = str(uuid.uuid4())
    home = (root / "snapshots" / collection).resolve()
    for key in (
        part_key(collection, snapshot, 0, "parquet"),
        snapshot_prefix(collection, snapshot) + "x",
    ):
        path = store.path_of(key).resolve()
        assert path.is_relative_to(home) and path != home, (collection, key, path)
    meta = store.path_of(metadata_key(collection, snapshot)).resolve()
    assert meta.parent == home


@given(st.text(max_size=40))
def test_any_other_collection_id_is_refused(collection: str) -> None:
    """Arbitrary text is either a valid id or refused before any key is made."""
    if COLLECTION_ID.fullmatch(collection):
        assert check_collection_id(collection) == collection
    else:
        with pytest.raises(InvalidRequestError):
            check_job(SnapshotJob(collection, "r", InlineSource([])))


@pytest.mark.parametrize("collection", TRICKY_COLLECTIONS, ids=repr)
def test_tricky_collection_ids_are_refused(collection: str) -> None:
    """Traversal, separators, NUL, bidi and look-alike tricks never make a job."""
    with pytest.raises(InvalidRequestError, match="collection_id"):
        check_job(SnapshotJob(collection, "r", InlineSource([])))


# -- source URIs ------------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """exports/ (with tricks inside), a sibling exports-evil/, a symlinked root, a store."""
    exports = tmp_path / "exports"
    (exports / "sub").mkdir(parents=True)
    (exports / "%2e%2e").mkdir()
    for name in ("a.parquet", "sub/b.parquet", "%2e%2e/c.parquet", "..\\..\\d.parquet"):
        (exports / name).write_bytes(b"x")
    (exports / "passwd.parquet").symlink_to("/etc/passwd")
    (exports / "etc").symlink_to("/etc")
    (exports / "inner.parquet").symlink_to(exports / "a.parquet")
    (tmp_path / "exports-evil").mkdir()
    (tmp_path / "exports-evil" / "x.parquet").write_bytes(b"x")
    (tmp_path / "linked-exports").symlink_to(exports)
    (tmp_path / "store").mkdir()
    return {"root": tmp_path, "exports": exports}


def reader(layout: dict[str, Path], *roots: str) -> SourceReader:
    allowed = [
        (layout["root"] / "store").as_uri(),
        (layout["root"] / "linked-exports").as_uri(),  # a root that is itself a symlink
        f"s3://{BUCKET}/allowed",
        *roots,
    ]
    return SourceReader(allowed, spool_dir=layout["root"])


REFUSED = [
    ("file:///etc/passwd", SourceNotAllowedError),
    ("file://localhost/etc/passwd", SourceNotAllowedError),
    ("file:/etc/passwd", SourceNotAllowedError),
    ("FILE:///etc/passwd", SourceNotAllowedError),
    ("file:///proc/self/root/etc/passwd", SourceNotAllowedError),
    ("{exports}/../../../../../../etc/passwd", SourceNotAllowedError),
    ("{exports}/sub/../../exports-evil/x.parquet", SourceNotAllowedError),
    ("{exports}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", SourceNotAllowedError),
    ("{exports}/%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", SourceNotAllowedError),
    ("{exports}/./.././../etc/passwd", SourceNotAllowedError),
    ("{exports}//..//..//..//etc/passwd", SourceNotAllowedError),
    ("{exports}/passwd.parquet", SourceNotAllowedError),
    ("{exports}/etc/passwd", SourceNotAllowedError),
    ("{exports}-evil/x.parquet", SourceNotAllowedError),
    ("{exports}/a.parquet%00.json", SourceError),
    ("file://evil.example.com/etc/passwd", SourceError),
    ("file://..%2f..%2fetc/passwd", SourceError),
    ("s3://other-bucket/allowed/x.parquet", SourceNotAllowedError),
    (f"s3://{BUCKET}/allowed-not/x.parquet", SourceNotAllowedError),
    (f"s3://{BUCKET}/x.parquet", SourceNotAllowedError),
    (f"s3://{BUCKET}/allowed/../secret/x.parquet", SourceError),
    (f"s3://{BUCKET}/allowed/%2e%2e/secret/x.parquet", SourceError),
    (f"s3://{BUCKET}/allowed/%2E%2E%2Fsecret%2Fx.parquet", SourceError),
    (f"s3://{BUCKET}/allowed/./x.parquet", SourceError),
    ("s3:///allowed/x.parquet", SourceError),
    ("http://169.254.169.254/latest/meta-data/", SourceError),
    ("ftp://example.com/x.parquet", SourceError),
    ("../etc/passwd", SourceError),
    ("", SourceError),
]


@pytest.mark.parametrize(("template", "error"), REFUSED, ids=[t for t, _ in REFUSED])
def test_source_uris_outside_the_allow_list_are_refused(
    layout: dict[str, Path], template: str, error: type[AkisnapError]
) -> None:
    """After decoding and resolving, a URI outside every allowed root is refused."""
    uri = template.replace("{exports}", layout["exports"].as_uri())
    with pytest.raises(error):
        reader(layout).check_allowed(uri)


ALLOWED = [
    "{exports}/a.parquet",
    "{exports}/sub/../a.parquet",
    "{exports}/sub/b.parquet",
    "{exports}/%61.parquet",
    "{exports}/%252e%252e/c.parquet",  # a directory literally named %2e%2e: inside
    "{exports}/..%5C..%5Cd.parquet",  # backslashes are plain characters here
    "{exports}/inner.parquet",  # a symlink that stays inside
    "{linked}/sub/b.parquet",
    f"s3://{BUCKET}/allowed/x.parquet",
    f"s3://{BUCKET}/allowed/deeper/x.parquet",
]


@pytest.mark.parametrize("template", ALLOWED)
def test_allowed_source_uris_resolve_inside_an_allowed_root(
    layout: dict[str, Path], template: str
) -> None:
    """What is allowed resolves (symlinks and all) to a path inside an allowed root."""
    uri = template.replace("{exports}", layout["exports"].as_uri()).replace(
        "{linked}", (layout["root"] / "linked-exports").as_uri()
    )
    location = reader(layout).check_allowed(uri)
    if location.scheme == "file":
        assert Path(location.path).resolve().is_relative_to(layout["exports"].resolve())
        assert Path(location.path).resolve() == Path(location.path)
    else:
        assert location.bucket == BUCKET and location.key.startswith("allowed/")


# -- store keys -------------------------------------------------------------------------------


BAD_KEYS = ["../x", "/etc/passwd", "a/../../x", "a/./b", "a//b", "", "a/", ".", "a\\..\\b",
            "a\x00b", "snapshots/../../../etc/passwd"]  # fmt: skip


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
async def test_object_keys_cannot_leave_the_store_root(tmp_path: Path, key: str) -> None:
    """Every store operation refuses a key that is not a plain relative path."""
    (tmp_path / "store").mkdir()
    store = LocalStore(tmp_path / "store")
    for operation in (
        lambda: store.put_bytes(key, b"x"),
        lambda: store.get_bytes(key),
        lambda: store.head(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(StoreConfigError):
            await operation()
    assert not any((tmp_path / "store").iterdir())


@pytest.mark.parametrize("uri", [f"s3://{BUCKET}/../x", f"s3://{BUCKET}/a/../../x", "s3://../x"])
def test_s3_store_prefixes_cannot_traverse(uri: str) -> None:
    """An S3 store root with '..' in its prefix (or no bucket) is refused."""
    with pytest.raises(StoreConfigError):
        S3Store.from_uri(uri, S3Options(endpoint_url="http://127.0.0.1:9"))


# -- restore ----------------------------------------------------------------------------------


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.fixture
async def snapshot(tmp_path: Path) -> AsyncIterator[tuple[LocalStore, SnapshotMetadata]]:
    store = open_store((tmp_path / "store").as_uri())
    assert isinstance(store, LocalStore)
    documents = [{"id": str(uuid.UUID(int=i + 1)), "vector": [i, 1.0, 2.0]} for i in range(50)]
    job = SnapshotJob("contained", str(uuid.uuid4()), InlineSource(documents))
    creator = SnapshotCreator(store, source_roots=[store.root_uri], part_size_bytes=1024 * 1024)
    yield store, (await creator(job)).metadata
    await store.close()


@pytest.mark.parametrize("suffix", [".parquet", ".arrow", ".npy", ".jsonl"])
async def test_restore_writes_only_the_file_asked_for(
    snapshot: tuple[LocalStore, SnapshotMetadata], tmp_path: Path, suffix: str
) -> None:
    """A restore adds exactly its output file (parents made as needed): no temporary or part
    files left beside it, in the store, or in the system temp directory."""
    store, metadata = snapshot
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "neighbour.txt").write_text("untouched")
    before, temp_before = tree(tmp_path), set(os.listdir(tempfile.gettempdir()))
    out = tmp_path / "out" / "deeper" / f"restored{suffix}"
    result = await restore_snapshot(store, metadata, out)
    assert result.path == out and result.rows == 50
    assert tree(tmp_path) - before == {"out/deeper", f"out/deeper/restored{suffix}"}
    assert before - tree(tmp_path) == set()
    assert (tmp_path / "out" / "neighbour.txt").read_text() == "untouched"
    new_temp = set(os.listdir(tempfile.gettempdir())) - temp_before
    assert not [name for name in new_temp if "akisnap" in name or name.endswith(".part")]


async def test_a_failed_restore_leaves_nothing_and_keeps_the_old_file(
    snapshot: tuple[LocalStore, SnapshotMetadata], tmp_path: Path
) -> None:
    """A part that fails its checksum stops the restore; the target keeps its old bytes and
    nothing else appears."""
    store, metadata = snapshot
    part = store.path_of(metadata.parts[0].key)
    part.write_bytes(part.read_bytes()[:-10] + b"0123456789")
    out = tmp_path / "out" / "restored.parquet"
    out.parent.mkdir()
    out.write_bytes(b"old bytes")
    before = tree(tmp_path)
    with pytest.raises(AkisnapError):
        await restore_snapshot(store, metadata, out)
    assert out.read_bytes() == b"old bytes"
    assert tree(tmp_path) == before


@pytest.mark.parametrize("bad_key", ["../../outside.parquet", "/etc/passwd", "snapshots/../../x"])
async def test_restore_never_reads_parts_outside_the_store(
    snapshot: tuple[LocalStore, SnapshotMetadata], tmp_path: Path, bad_key: str
) -> None:
    """A tampered metadata file naming a part outside the store is refused; nothing is read
    from there and nothing is written."""
    store, metadata = snapshot
    (tmp_path / "outside.parquet").write_bytes(store.path_of(metadata.parts[0].key).read_bytes())
    part = metadata.parts[0]
    forged = SnapshotMetadata(
        **{**metadata.__dict__, "parts": (PartInfo(bad_key, part.size, part.rows, part.sha256),)}
    )
    out = tmp_path / "out" / "restored.parquet"
    before = tree(tmp_path)
    with pytest.raises(StoreConfigError):
        await restore_snapshot(store, forged, out)
    assert tree(tmp_path) - before <= {"out"}
    assert not out.exists()


@pytest.mark.parametrize("collection", ["..", "../..", "../outside", "snapshots/..", "."])
async def test_listing_a_traversing_collection_never_reaches_outside(
    snapshot: tuple[LocalStore, SnapshotMetadata], tmp_path: Path, collection: str
) -> None:
    """Listing with a collection that tries to climb out never returns a snapshot from
    outside the store (a metadata file planted next to the store stays unseen)."""
    store, metadata = snapshot
    planted = tmp_path / "outside" / f"{uuid.uuid4()}.metadata.json"
    planted.parent.mkdir()
    planted.write_bytes(metadata.to_json())
    try:
        listed = await Catalog(store).list(collection)
    except AkisnapError:
        return
    assert all(meta.snapshot_id == metadata.snapshot_id for meta in listed)
