"""An object store in a local directory: atomic writes (temp file, fsync, rename)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from handlers.errors import (
    ObjectMissingError,
    StoreAccessDeniedError,
    StoreNotFoundError,
    StoreUnavailableError,
    WriteNotVerifiedError,
)
from handlers.filemode import new_file_mode
from handlers.stores.base import CHUNK_BYTES, FeatureReport, ObjectInfo, check_key

SPOOL_DIR_NAME = ".akisnap-tmp"


class LocalStore:
    """Objects are files under ``root``; a key's '/' are directories."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()

    @property
    def root_uri(self) -> str:
        return self._root.as_uri()

    @property
    def root(self) -> Path:
        return self._root

    def spool_dir(self) -> Path:
        spool = self._root / SPOOL_DIR_NAME
        spool.mkdir(parents=True, exist_ok=True)
        return spool

    def path_of(self, key: str) -> Path:
        return self._root / check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self.path_of(key)

    async def put_file(self, key: str, path: Path, *, sha256_hex: str) -> bool:
        """Always vouches: a spool file is moved by rename, so the key holds the very bytes the
        encoder hashed as it wrote them; any other file is hashed as it is copied and refused
        on a mismatch. Reading the part back would only hash the same bytes a second time."""
        await asyncio.to_thread(self._install, path, self.path_of(key), sha256_hex)
        return True

    async def put_bytes(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write_atomically, self.path_of(key), data)

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        return await asyncio.to_thread(self._write_if_absent, self.path_of(key), data)

    def watch_features(self, report: FeatureReport) -> None:
        report("conditional_writes", True)  # link(2) never replaces an existing file

    async def get_bytes(self, key: str) -> bytes:
        return await asyncio.to_thread(self._read, self.path_of(key))

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        return await asyncio.to_thread(self._read_range, self.path_of(key), start, length)

    async def iter_chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self._open, self.path_of(key))
        try:
            while chunk := await asyncio.to_thread(handle.read, chunk_bytes):
                yield chunk
        finally:
            handle.close()

    async def head(self, key: str) -> ObjectInfo | None:
        return await asyncio.to_thread(self._stat, key)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        infos = await asyncio.to_thread(lambda: list(self._walk(prefix)))
        for info in infos:
            yield info

    async def delete(self, key: str) -> None:
        path = self.path_of(key)
        await asyncio.to_thread(_unlink_quietly, path)

    async def ping(self) -> None:
        if not await asyncio.to_thread(os.access, self._root, os.W_OK):
            raise StoreUnavailableError(f"store directory {self._root} is not writable")

    async def close(self) -> None:
        return None

    # -- blocking helpers, run in threads ------------------------------------------------------

    def _install(self, source: Path, target: Path, sha256_hex: str) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if source.resolve().is_relative_to(self._root / SPOOL_DIR_NAME):
                _fsync(source)
                os.replace(source, target)
            else:
                with source.open("rb") as handle:
                    self._write_stream(target, _hashed(handle, sha256_hex, target), replace=True)
            _fsync(target.parent)
        except OSError as exc:
            raise _store_error(exc, target) from exc

    def _write_atomically(self, target: Path, data: bytes) -> None:
        try:
            self._write_stream_atomically(target, iter([data]))
        except OSError as exc:
            raise _store_error(exc, target) from exc

    def _write_stream_atomically(self, target: Path, chunks: Iterator[bytes]) -> None:
        self._write_stream(target, chunks, replace=True)

    def _write_if_absent(self, target: Path, data: bytes) -> bool:
        try:
            return self._write_stream(target, iter([data]), replace=False)
        except OSError as exc:
            raise _store_error(exc, target) from exc

    def _write_stream(self, target: Path, chunks: Iterator[bytes], *, replace: bool) -> bool:
        """Temp file, fsync, then rename over the target, or link it (fails if it exists)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            os.fchmod(fd, new_file_mode())
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            if replace:
                os.replace(temp_name, target)
            else:
                try:
                    os.link(temp_name, target)
                except FileExistsError:
                    return False
                finally:
                    _unlink_quietly(Path(temp_name))
        except BaseException:
            _unlink_quietly(Path(temp_name))
            raise
        _fsync(target.parent)
        return True

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectMissingError(f"object {path.relative_to(self._root)} is missing") from None
        except OSError as exc:
            raise _store_error(exc, path) from exc

    def _read_range(self, path: Path, start: int, length: int) -> bytes:
        with self._open(path) as handle:
            try:
                handle.seek(start)
                return handle.read(max(length, 0))
            except OSError as exc:
                raise _store_error(exc, path) from exc

    def _open(self, path: Path) -> BinaryIO:
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise ObjectMissingError(f"object {path.relative_to(self._root)} is missing") from None

    def _stat(self, key: str) -> ObjectInfo | None:
        try:
            stat = self.path_of(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, tz=UTC))

    def _walk(self, prefix: str) -> Iterator[ObjectInfo]:
        start = self._root / prefix.rsplit("/", 1)[0] if "/" in prefix else self._root
        if not start.is_dir():
            return
        for directory, subdirs, files in os.walk(start):
            subdirs[:] = [d for d in subdirs if d != SPOOL_DIR_NAME]
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                path = Path(directory) / name
                key = path.relative_to(self._root).as_posix()
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        stat = path.stat()
                        yield ObjectInfo(
                            key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, tz=UTC)
                        )


def local_store_at(path: Path, *, create: bool = True) -> LocalStore:
    """The store in directory ``path`` (made when ``create``, else it must exist)."""
    if not create and not path.is_dir():
        raise StoreNotFoundError(
            f"no store at {path} (check --store or AKISNAP_STORE; nothing was created)"
        )
    path.mkdir(parents=True, exist_ok=True)
    return LocalStore(path)


def _store_error(exc: OSError, path: Path) -> Exception:
    if isinstance(exc, PermissionError):  # the environment's to fix: wait, never dead-letter
        return StoreAccessDeniedError(f"permission denied writing {path}")
    return StoreUnavailableError(f"local store I/O error on {path.name}: {exc.strerror or exc}")


def _fsync(path: Path) -> None:
    """Flush a file or a directory entry to disk (a rename is durable once its dir is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hashed(handle: BinaryIO, sha256_hex: str, target: Path) -> Iterator[bytes]:
    """The file's chunks; raises before the last is written if they do not hash to sha256_hex,
    so the temp file is dropped and nothing lands at the key."""
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK_BYTES):
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != sha256_hex:
        raise WriteNotVerifiedError(f"{target.name}: copied bytes do not match their SHA-256")


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
