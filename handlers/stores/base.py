"""The one async protocol every object store speaks, and key hygiene shared by all."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from handlers.errors import StoreConfigError

CHUNK_BYTES = 8 * 1024 * 1024
_SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows of one object without reading it."""

    key: str
    size: int
    last_modified: datetime
    sha256: str | None = None
    """The SHA-256 the server computed and checked when the object was written (hex), when
    it keeps one and says so; None otherwise (then only reading the bytes proves them)."""


FeatureReport = Callable[[str, bool], None]
"""Told once per feature ("conditional_writes", "checksums") whether the server has it."""


def ignore_feature(feature: str, supported: bool) -> None:
    return None


@runtime_checkable
class ObjectStore(Protocol):
    """Keys are relative to the store's root, '/'-separated, never absolute or with '..'."""

    @property
    def root_uri(self) -> str: ...

    def spool_dir(self) -> Path:
        """Where encoders write parts before upload (for a local store: on the same disk)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The object's file when the store is a local directory (read in place), else None."""
        ...

    async def put_file(self, key: str, path: Path, *, sha256_hex: str) -> bool:
        """Store a finished local file under key (the file may be moved or removed).

        True when the store itself checked the stored bytes against ``sha256_hex`` (an S3
        server validating ChecksumSHA256), so reading them back would prove nothing more.
        """
        ...

    async def put_bytes(self, key: str, data: bytes) -> None: ...

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` unless an object is at ``key``; False (nothing written) if one is.
        Never overwrites: this is the commit of a snapshot."""
        ...

    def watch_features(self, report: FeatureReport) -> None:
        """Have ``report`` told which write path the store takes, once it knows."""
        ...

    async def get_bytes(self, key: str) -> bytes: ...

    def iter_chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        """Stream an object's bytes in order."""
        ...

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of an object from byte ``start``; fewer only past its end."""
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """Size and time of an object, or None when it does not exist."""
        ...

    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with prefix, in no particular order."""
        ...

    async def delete(self, key: str) -> None:
        """Remove an object; removing a missing one is not an error."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailableError unless the store answers (readiness)."""
        ...

    async def close(self) -> None: ...


def check_key(key: str) -> str:
    """Refuse keys that could leave the store's root (absolute, '..', odd characters)."""
    if not _SAFE_KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise StoreConfigError(f"refused object key {key!r}: not a plain relative key")
    return key
