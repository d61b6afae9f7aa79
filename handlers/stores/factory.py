"""Open the object store a URI names: ``file://…`` (or a path) or ``s3://bucket/prefix``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from handlers.errors import SourceError, StoreConfigError
from handlers.stores.base import ObjectStore
from handlers.stores.local import local_store_at
from handlers.uris import parse_location


@dataclass(frozen=True)
class S3Options:
    """How to reach S3; empty values fall back to the default AWS chain."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    addressing_style: str = "path"
    sse: str | None = None
    sse_kms_key_id: str | None = None
    multipart_threshold_bytes: int = 64 * 1024 * 1024
    multipart_part_bytes: int = 16 * 1024 * 1024
    max_concurrency: int = 4
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 60.0
    spool_dir: Path | None = None
    conditional_writes: str = "auto"
    """"auto": commit with If-None-Match once a probe showed the server honours it;
    "off": never (HEAD, then PUT), for servers known to lack it."""


def open_store(uri: str, s3: S3Options | None = None, *, create: bool = True) -> ObjectStore:
    """The store behind a root URI or plain path; the caller closes it. With ``create``
    false (read-only verbs) a local store that does not exist is refused, not made."""
    try:
        location = parse_location(uri)
    except SourceError as exc:
        raise StoreConfigError(
            f"unusable store {exc.message}: use a path, file:///dir or s3://bucket/prefix"
        ) from None
    if location.scheme == "s3":
        # Imported on demand: aiobotocore is slow to import and local-only use never needs it.
        from handlers.stores.s3 import S3Store  # noqa: PLC0415

        return S3Store.from_uri(f"s3://{location.bucket}/{location.key}", s3 or S3Options())
    return local_store_at(location.local_path, create=create)
