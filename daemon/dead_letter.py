"""Dead letters: the original request, byte for byte, plus the headers that say why.

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

from handlers.errors import MAX_MESSAGE_CHARS

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

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s:@]+:[^/\s@]*@")
_SIGNED_QUERY = re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"']+")
_NAMED_SECRET = re.compile(
    # not after a letter, digit or "/": AWS_SECRET_ACCESS_KEY=x is one, /etc/passwd: is not
    r"(?i)(?<![/A-Za-z0-9])(secret[_-]?(?:access[_-]?)?key|secret|password|passwd|token"
    r"|access[_-]?key(?:[_-]?id)?"
    r"|sasl[_-]?plain[_-]?password|authorization)(\"?'?\s*[:=]\s*\"?'?)[^\s\"',;&]+"
)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_WHITESPACE = re.compile(r"\s+")
REDACTED = "***"


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
        for key, raw in self.headers:
            if key == name:
                return raw.decode("utf-8", "replace")
        return None


def safe_message(text: str, secrets: Iterable[str] = (), limit: int = MAX_MESSAGE_CHARS) -> str:
    """One line, at most ``limit`` characters, with credentials and known secrets masked."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    text = _SIGNED_QUERY.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _NAMED_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _AWS_KEY_ID.sub(REDACTED, text)
    text = _WHITESPACE.sub(" ", text).strip()
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


def headers_dict(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    """Headers as text, for logs, tests and the CLI (the last value of a name wins)."""
    return {key: raw.decode("utf-8", "replace") for key, raw in headers or ()}


def describe(record: Any) -> str:
    """A short ``topic[partition]@offset`` for logs."""
    return f"{record.topic}[{record.partition}]@{record.offset}"
