"""A dead letter and its headers: built by the daemon, read back by the tools.

A dead letter is the original request, byte for byte, plus the headers that say why.

DESIGN ("Events"): the dead letter keeps the original key, value and headers untouched and adds
``akisnap.error.*``, ``akisnap.attempts``, ``akisnap.original.*``, ``akisnap.failed_at`` and,
on replays, ``akisnap.replay.count`` (copied from the original's headers). The error message is
bounded and scrubbed of anything that looks like a credential.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from daemon.events import peek_ids
from handlers.errors import MAX_MESSAGE_CHARS
from handlers.secrets import scrub_secrets

H_STAGE = "akisnap.error.stage"
H_CLASS = "akisnap.error.class"
H_MESSAGE = "akisnap.error.message"
H_RETRYABLE = "akisnap.error.retryable"
H_ATTEMPTS = "akisnap.attempts"
H_TOPIC = "akisnap.original.topic"
H_PARTITION = "akisnap.original.partition"
H_OFFSET = "akisnap.original.offset"
H_TIMESTAMP = "akisnap.original.timestamp"
H_FAILED_AT = "akisnap.failed_at"
H_REPLAY_COUNT = "akisnap.replay.count"
AKISNAP_HEADER_PREFIX = "akisnap."

Headers = list[tuple[str, bytes]]

_WHITESPACE = re.compile(r"\s+")


class SourceRecord(Protocol):
    """What a dead letter needs of the consumed record (aiokafka's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Failure:
    """Why a request failed for good: the stage, the error and whether a retry could help."""

    stage: str
    error_class: str
    message: str
    retryable: bool
    attempts: int


@dataclass(frozen=True)
class DeadLetter:
    """The record to publish on the dead-letter topic."""

    key: bytes | None
    value: bytes | None
    headers: Headers

    def header(self, name: str) -> str | None:
        return header_text(self.headers, name)


def header_text(headers: Iterable[tuple[str, bytes]], name: str) -> str | None:
    """The text of header ``name``, or None. The last one of that name wins, as with Kafka's
    own ``Headers.lastHeader``: a header added later overrides an earlier one (and
    :func:`replay_count` reads the original's count the same way)."""
    found: str | None = None
    for key, raw in headers:
        if key == name:
            found = raw.decode("utf-8", "replace")
    return found


def safe_message(text: str, secrets: Iterable[str] = (), limit: int = MAX_MESSAGE_CHARS) -> str:
    """One line, at most ``limit`` characters, with credentials and known secrets masked."""
    text = _WHITESPACE.sub(" ", scrub_secrets(text, secrets)).strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def replay_count(headers: Sequence[tuple[str, bytes]] | None) -> bytes | None:
    """The original's ``akisnap.replay.count`` header, if it has one (last one wins)."""
    found: bytes | None = None
    for key, raw in headers or ():
        if key == H_REPLAY_COUNT:
            found = raw
    return found


def build_dead_letter(
    record: SourceRecord,
    failure: Failure,
    *,
    failed_at: datetime | None = None,
    secrets: Iterable[str] = (),
) -> DeadLetter:
    """The dead letter of ``record``: its key and value untouched, plus the DESIGN headers."""
    stamp = (failed_at or datetime.now(UTC)).astimezone(UTC)
    headers: Headers = carried_headers(record.headers)
    headers += [
        (H_STAGE, failure.stage.encode()),
        (H_CLASS, failure.error_class.encode()),
        (H_MESSAGE, safe_message(failure.message, secrets).encode()),
        (H_RETRYABLE, b"true" if failure.retryable else b"false"),
        (H_ATTEMPTS, str(failure.attempts).encode()),
        (H_TOPIC, record.topic.encode()),
        (H_PARTITION, str(record.partition).encode()),
        (H_OFFSET, str(record.offset).encode()),
        (H_TIMESTAMP, str(record.timestamp).encode()),
        (H_FAILED_AT, stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()),
    ]
    count = replay_count(record.headers)
    if count is not None:
        headers.append((H_REPLAY_COUNT, count))
    return DeadLetter(key=record.key, value=record.value, headers=headers)


def carried_headers(headers: Sequence[tuple[str, bytes]] | None) -> Headers:
    """The request's own headers (``traceparent``, ``tracestate``, any other), in order:
    copied onto its result and kept on its dead letter. ``akisnap.*`` ones are ours to set."""
    return [(key, raw) for key, raw in headers or () if not key.startswith(AKISNAP_HEADER_PREFIX)]


def without_value(letter: DeadLetter, size: int) -> DeadLetter:
    """The dead letter of a value too large to publish again: no value, and a message that
    says where the original still is (its topic, partition and offset headers)."""
    headers = [
        (name, raw) if name != H_MESSAGE else (name, _dropped_note(raw, size))
        for name, raw in letter.headers
    ]
    return DeadLetter(key=letter.key, value=None, headers=headers)


def _dropped_note(raw: bytes, size: int) -> bytes:
    note = (
        f" [value of {size} bytes too large to republish: left out; the original is at "
        "akisnap.original.topic/partition/offset]"
    )
    text = raw.decode("utf-8", "replace")
    return (text[: MAX_MESSAGE_CHARS - len(note)] + note).encode()


def describe(record: Any) -> str:
    """A short ``topic[partition]@offset`` for logs."""
    return f"{record.topic}[{record.partition}]@{record.offset}"


# -- read back from the dead-letter topic (the dlq tools) ----------------------------------


@dataclass(frozen=True)
class DeadLetterRecord:
    """A record of the dead-letter topic, with its headers read."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def from_record(cls, record: Any) -> DeadLetterRecord:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=int(record.timestamp),
            key=record.key,
            value=record.value,
            headers=tuple((str(k), bytes(v)) for k, v in record.headers or ()),
        )

    def header(self, name: str) -> str | None:
        return header_text(self.headers, name)

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)

    @property
    def stage(self) -> str:
        return self.header(H_STAGE) or "?"

    @property
    def error_class(self) -> str:
        return self.header(H_CLASS) or "?"

    @property
    def message(self) -> str:
        return self.header(H_MESSAGE) or ""

    @property
    def replay_count(self) -> int:
        text = self.header(H_REPLAY_COUNT)
        try:
            return max(0, int(text)) if text is not None else 0
        except ValueError:
            return 0

    @property
    def collection_id(self) -> str | None:
        if self.key:
            return self.key.decode("utf-8", "replace")
        return peek_ids(self.value).get("collection_id")

    @property
    def request_id(self) -> str | None:
        return peek_ids(self.value).get("request_id")

    @property
    def original(self) -> str:
        """``topic[partition]@offset`` of the request that failed."""
        topic, partition, offset = (self.header(h) for h in (H_TOPIC, H_PARTITION, H_OFFSET))
        return f"{topic or '?'}[{partition or '?'}]@{offset or '?'}"

    @property
    def position(self) -> str:
        return f"{self.partition}@{self.offset}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dlq_topic": self.topic,
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "time": self.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "failed_at": self.header(H_FAILED_AT),
            "stage": self.stage,
            "error_class": self.error_class,
            "message": self.message,
            "retryable": self.header(H_RETRYABLE) == "true",
            "attempts": _int_or_none(self.header(H_ATTEMPTS)),
            "collection_id": self.collection_id,
            "request_id": self.request_id,
            "original_topic": self.header(H_TOPIC),
            "original_partition": _int_or_none(self.header(H_PARTITION)),
            "original_offset": _int_or_none(self.header(H_OFFSET)),
            "replay_count": self.replay_count,
            "value_bytes": len(self.value or b""),
        }


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
