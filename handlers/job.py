"""What to snapshot: a collection, a source of documents, a format. Same for CLI and daemon."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from handlers.errors import InvalidRequestError

if TYPE_CHECKING:  # an annotation only: `akisnap --help` imports this module, not pyarrow
    from handlers.model import DocumentBatch

# Fixed forever: snapshot ids of existing snapshots depend on it.
SNAPSHOT_NAMESPACE = uuid.UUID("6f1c2a9e-0c4b-5d7e-9a31-2b8f4e6d0a17")
# The request's limits, stated once: the event model (daemon/events.py) uses them as types,
# check_job() for the jobs the CLI and the tools build.
COLLECTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_REQUEST_ID_CHARS = 200
SnapshotFormat = Literal["parquet", "akidb-parquet", "akidb-json"]
# "json" is the older name of "akidb-json" (AkiDB 2.0's JSON snapshot), still accepted.
SourceFormat = Literal["parquet", "arrow", "npy", "akidb-json", "json"]
Compression = Literal["zstd", "snappy", "lz4", "none"]
SNAPSHOT_FORMATS: tuple[str, ...] = get_args(SnapshotFormat)
SOURCE_FORMATS: tuple[str, ...] = get_args(SourceFormat)
COMPRESSIONS: tuple[str, ...] = get_args(Compression)


@dataclass(frozen=True)
class InlineSource:
    """Documents carried in the request itself (small collections). ``batch``: the same
    documents already built into a batch off the event loop (then ``documents`` is empty)."""

    documents: Sequence[Mapping[str, Any]]
    batch: DocumentBatch | None = None


@dataclass(frozen=True)
class UriSource:
    """An export to read: ``file://`` or ``s3://``, in one of SOURCE_FORMATS."""

    uri: str
    format: SourceFormat


SourceSpec = InlineSource | UriSource


@dataclass(frozen=True)
class SnapshotJob:
    """One snapshot to make. ``snapshot_id`` is derived from the collection and the request
    id, so redoing a request writes the same keys and never makes a second snapshot.
    Plain data: the event model builds valid ones, :func:`check_job` checks any other."""

    collection_id: str
    request_id: str
    source: SourceSpec
    format: SnapshotFormat = "parquet"
    compression: str = "zstd"
    labels: Mapping[str, str] = field(default_factory=dict)
    # Refuse an export whose vectors are not float32 rather than convert them.
    exact: bool = False
    # A delta: the snapshot it applies to ("latest": the collection's newest). With
    # ``deletes`` (even empty) the source is a change set, else a full export to compare.
    base: str | None = None
    deletes: tuple[str, ...] | None = None

    @property
    def snapshot_id(self) -> str:
        return snapshot_id_for(self.collection_id, self.request_id)


def check_job(job: SnapshotJob) -> SnapshotJob:
    """``job`` if it keeps the request contract, else InvalidRequestError. For jobs built
    from arguments or files (CLI, migrate, compact); a request event's job is checked by
    its model, which states these limits as types, and by :func:`check_rules`."""
    check_collection_id(job.collection_id)
    if not job.request_id or len(job.request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequestError(
            f"request_id must be a non-empty string of at most {MAX_REQUEST_ID_CHARS} chars"
        )
    if job.format not in SNAPSHOT_FORMATS:
        raise InvalidRequestError(f"format {job.format!r} is not one of {SNAPSHOT_FORMATS}")
    if job.compression not in COMPRESSIONS:
        raise InvalidRequestError(f"compression {job.compression!r} is not one of {COMPRESSIONS}")
    if isinstance(job.source, UriSource) and job.source.format not in SOURCE_FORMATS:
        raise InvalidRequestError(
            f"source format {job.source.format!r} is not one of {SOURCE_FORMATS}"
        )
    check_rules(job)
    return job


def check_rules(job: SnapshotJob) -> None:
    """The rules across fields, which no field's type states: every job keeps them."""
    check_delta(job)
    if job.format.startswith("akidb-"):
        check_uuid_collection(job.collection_id, job.format)


def check_delta(job: SnapshotJob) -> None:
    if job.base is None:
        if job.deletes is not None:
            raise InvalidRequestError("deletes need a base: a change set applies to a snapshot")
        return
    if job.format != "parquet":
        raise InvalidRequestError(f"a delta (base) is a native parquet snapshot, not {job.format}")
    if job.base != "latest":
        try:
            uuid.UUID(job.base)
        except ValueError:
            raise InvalidRequestError(
                f"base {job.base!r} must be a snapshot id or 'latest'"
            ) from None
    for deleted in job.deletes or ():
        try:
            uuid.UUID(deleted)
        except (ValueError, TypeError, AttributeError):
            raise InvalidRequestError(f"deletes: {deleted!r} is not a UUID document id") from None


def snapshot_id_for(collection_id: str, request_id: str) -> str:
    """UUIDv5 of ``collection/request``: the same request id in two collections makes two
    snapshots ('/' cannot occur in a collection id, so no two pairs share a name)."""
    return str(uuid.uuid5(SNAPSHOT_NAMESPACE, f"{collection_id}/{request_id}"))


def new_request_id() -> str:
    return str(uuid.uuid4())


def check_collection_id(collection_id: object) -> str:
    if not isinstance(collection_id, str) or not COLLECTION_ID.fullmatch(collection_id):
        raise InvalidRequestError(
            f"collection_id {collection_id!r} must match {COLLECTION_ID.pattern}"
        )
    return collection_id


def check_uuid_collection(collection_id: str, fmt: str) -> None:
    """AkiDB 2.0 parses the collection id as a UUID: any other id would be unrestorable."""
    try:
        uuid.UUID(collection_id)
    except ValueError:
        raise InvalidRequestError(
            f"format {fmt} needs a UUID collection id (AkiDB 2.0 names collections by UUID), "
            f"not {collection_id!r}"
        ) from None


def source_format_from_uri(uri: str) -> SourceFormat:
    """Guess an export's format from its extension (for the CLI's --from)."""
    lowered = uri.lower()
    for suffix, kind in (
        (".parquet", "parquet"),
        (".arrow", "arrow"),
        (".arrows", "arrow"),
        (".ipc", "arrow"),
        (".feather", "arrow"),
        (".npy", "npy"),
        (".json", "akidb-json"),
    ):
        if lowered.endswith(suffix):
            return kind  # type: ignore[return-value]
    raise InvalidRequestError(
        f"cannot tell the format of {uri!r} from its extension (.parquet, .arrow, .npy or .json)"
    )
