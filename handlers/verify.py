"""Stage 'verify': what the store holds is byte for byte what the metadata promises.

The quick check compares each part's size and SHA-256: the SHA-256 the server reports (one
HEAD) where it checked the bytes itself on upload, else by reading the bytes back. The full
check reads every byte back whatever the server says, and decodes each part (rows, dimension,
schema, finiteness).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from handlers.catalog import Catalog
from handlers.codecs import read_part
from handlers.errors import CorruptSnapshotError, ObjectMissingError, SnapshotNotFoundError
from handlers.executor import run_blocking
from handlers.hashing import sha256_file, sha256_stream
from handlers.metadata import PartInfo, SnapshotMetadata
from handlers.model import DocumentBatch
from handlers.stores import ObjectInfo, ObjectStore


@dataclass(frozen=True)
class VerifyReport:
    snapshot_id: str
    parts_checked: int
    bytes_checked: int
    full: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Verifier:
    """Checks parts in the store against their PartInfo; raises CorruptSnapshotError."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    async def __call__(self, parts: Iterable[PartInfo]) -> int:
        checked = 0
        for part in parts:
            await self.check_part(part)
            checked += part.size
        return checked

    async def check_part(self, part: PartInfo, *, read_back: bool = False) -> None:
        """Size and SHA-256; the bytes are read only when the server cannot vouch for them
        (or ``read_back`` asks for it)."""
        info = await head_checked(self._store, part)
        if info.sha256 is not None and part.sha256 and not read_back:
            return
        in_place = self._store.local_path(part.key)
        if in_place is not None:
            await _check_in_place(in_place, part)
            return
        try:
            digest, size = await sha256_stream(self._store.iter_chunks(part.key))
        except ObjectMissingError:
            raise CorruptSnapshotError(f"part {part.key} is missing") from None
        if not _digest_ok(part, digest) or size != part.size:
            raise CorruptSnapshotError(f"part {part.key} fails its SHA-256 check")


async def head_checked(store: ObjectStore, part: PartInfo) -> ObjectInfo:
    """What the store says of a part without reading it: refused when missing, of another
    size, or with a SHA-256 the server recorded that is not the metadata's."""
    info = await store.head(part.key)
    if info is None:
        raise CorruptSnapshotError(f"part {part.key} is missing")
    if info.size != part.size:
        raise CorruptSnapshotError(
            f"part {part.key} has {info.size} bytes, metadata says {part.size}"
        )
    if info.sha256 is not None and part.sha256 and info.sha256 != part.sha256:
        raise CorruptSnapshotError(f"part {part.key} fails its SHA-256 check")
    return info


NO_CHECKSUM_NOTE = (
    "no checksum was recorded (AkiDB 2.0 records none): checked that it decodes, its row "
    "count against vector_count, its dimension and that every value is finite"
)


def _digest_ok(part: PartInfo, digest: str) -> bool:
    """An empty ``sha256``: an AkiDB-written file, for which none was ever recorded."""
    return not part.sha256 or digest == part.sha256


async def verify_snapshot(
    store: ObjectStore,
    metadata: SnapshotMetadata,
    *,
    full: bool = False,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check every part; with full, decode them too (``progress`` gets rows as they are
    decoded). Problems are collected, not raised.

    A part without a recorded SHA-256 (written by AkiDB 2.0) is always decoded: that is all
    there is to check it with."""
    problems: list[str] = []
    verifier = Verifier(store)
    unsummed = any(not part.sha256 for part in metadata.parts)
    for part in metadata.parts:
        try:
            # The decode reads every byte back and checks its SHA-256 first (when recorded).
            if full or not part.sha256:
                await _decode_check(store, metadata, part, progress)
            else:
                await verifier.check_part(part)
        except CorruptSnapshotError as exc:
            problems.append(exc.message)
    rows = sum(part.rows for part in metadata.parts)
    if rows != metadata.vector_count:
        problems.append(f"parts hold {rows} rows, metadata says {metadata.vector_count}")
    problems.extend(await _side_problems(verifier, metadata))
    if metadata.delta is not None:
        problems.extend(await _base_problems(store, metadata, full=full))
    return VerifyReport(
        metadata.snapshot_id,
        len(metadata.parts),
        metadata.total_bytes,
        full or unsummed,
        problems,
        notes=[NO_CHECKSUM_NOTE] if unsummed else [],
    )


async def _side_problems(verifier: Verifier, metadata: SnapshotMetadata) -> list[str]:
    problems = []
    for side in metadata.side_objects:
        try:
            await verifier.check_part(side)
        except CorruptSnapshotError as exc:
            problems.append(exc.message)
    return problems


async def _base_problems(
    store: ObjectStore, metadata: SnapshotMetadata, *, full: bool
) -> list[str]:
    """A delta is only as sound as the chain below it: its base is verified too."""
    assert metadata.delta is not None
    base_id = metadata.delta.base_snapshot_id
    try:
        base = await Catalog(store).get(base_id, metadata.collection_id)
    except (CorruptSnapshotError, SnapshotNotFoundError) as exc:
        return [f"base {base_id}: {exc.message}"]
    report = await verify_snapshot(store, base, full=full)
    return [f"base {base_id}: {problem}" for problem in report.problems]


@contextlib.asynccontextmanager
async def checked_part_file(
    store: ObjectStore, part: PartInfo, scratch: Path
) -> AsyncIterator[Path]:
    """A local file holding the part, yielded only once its size and SHA-256 match.

    A local store's file is hashed in place; anything else is downloaded to ``scratch``
    (and removed afterwards).
    """
    in_place = store.local_path(part.key)
    if in_place is not None:
        await _check_in_place(in_place, part)
        yield in_place
        return
    path = await _download_checked(store, part, scratch)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


async def _check_in_place(path: Path, part: PartInfo) -> None:
    try:
        size = path.stat().st_size
        hashed = size == part.size and part.sha256
        digest = await asyncio.to_thread(sha256_file, path) if hashed else ""
    except FileNotFoundError:
        raise CorruptSnapshotError(f"part {part.key} is missing") from None
    if size != part.size or not _digest_ok(part, digest):
        raise CorruptSnapshotError(_mismatch(part, size))


def _mismatch(part: PartInfo, size: int) -> str:
    if not part.sha256:
        return f"part {part.key} has {size} bytes, its sidecar says {part.size}"
    return f"part {part.key} fails its SHA-256 check"


async def _download_checked(store: ObjectStore, part: PartInfo, scratch: Path) -> Path:
    handle = tempfile.NamedTemporaryFile(dir=scratch, suffix=".part", delete=False)  # noqa: SIM115
    path = Path(handle.name)
    try:
        digest = hashlib.sha256()
        size = 0
        with handle:
            async for chunk in store.iter_chunks(part.key):
                await asyncio.to_thread(handle.write, chunk)
                await run_blocking(digest.update, chunk)
                size += len(chunk)
        if size != part.size or not _digest_ok(part, digest.hexdigest()):
            raise CorruptSnapshotError(_mismatch(part, size))
        return path
    except ObjectMissingError:
        path.unlink(missing_ok=True)
        raise CorruptSnapshotError(f"part {part.key} is missing") from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise


async def _decode_check(
    store: ObjectStore,
    metadata: SnapshotMetadata,
    part: PartInfo,
    progress: Callable[[int], None] | None = None,
) -> None:
    with tempfile.TemporaryDirectory(prefix="akisnap-verify-") as directory:
        async with checked_part_file(store, part, Path(directory)) as path:
            rows = await asyncio.to_thread(_count_valid_rows, path, metadata, progress)
    if rows != part.rows:
        raise CorruptSnapshotError(
            f"part {part.key} decodes to {rows} rows, metadata says {part.rows}"
        )


def _count_valid_rows(
    path: Path, metadata: SnapshotMetadata, progress: Callable[[int], None] | None = None
) -> int:
    rows = 0
    for record in read_part(path, metadata.format, metadata.dimension):
        batch = DocumentBatch(record)
        if not np.isfinite(batch.vectors).all():
            raise CorruptSnapshotError(f"part {path.name} holds non-finite vector values")
        rows += record.num_rows
        if progress is not None:
            progress(record.num_rows)
    return rows
