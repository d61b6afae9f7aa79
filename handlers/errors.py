"""The two kinds of failure: permanent (bad input, dead-letter at once) and transient (retry).

Handlers only raise; the daemon decides commit, retry or dead letter from the kind alone.
Every error carries the pipeline stage it belongs to, which becomes the dead-letter header
``akisnap.error.stage``.
"""

from __future__ import annotations

from typing import ClassVar

MAX_MESSAGE_CHARS = 500


class AkisnapError(Exception):
    """Base of every error akisnap raises on purpose."""

    stage: ClassVar[str] = "validate"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message[:MAX_MESSAGE_CHARS])

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class PermanentError(AkisnapError):
    """The input itself is wrong: retrying cannot help, the request goes to the dead letters."""


class TransientError(AkisnapError):
    """A dependency failed for now (S3 5xx, timeout, broker gone): retry with backoff."""

    retryable: ClassVar[bool] = True


# -- permanent, per stage -------------------------------------------------------------------


class DecodeError(PermanentError):
    """The request message is not UTF-8 JSON."""

    stage = "decode"


class InvalidRequestError(PermanentError):
    """The request is well-formed JSON but breaks the request contract."""

    stage = "validate"


class InvalidDocumentsError(PermanentError):
    """The documents break the snapshot model: empty, mixed dimensions, NaN, bad ids, ..."""

    stage = "validate"


class SourceError(PermanentError):
    """The source URI is missing, not allowed, unsupported, or holds the wrong schema."""

    stage = "source"


class SourceNotAllowedError(SourceError):
    """The source URI lies outside the configured allow-list of roots."""


class EncodeError(PermanentError):
    """The batch could not be encoded into the snapshot format."""

    stage = "encode"


class CorruptSnapshotError(PermanentError):
    """Stored bytes do not match their metadata: size, SHA-256, schema or dimension."""

    stage = "verify"


class SnapshotNotFoundError(PermanentError):
    """No committed snapshot (metadata file) has that id."""

    stage = "verify"


class AmbiguousSnapshotIdError(PermanentError):
    """An id prefix matches more than one snapshot: the message lists the candidates."""

    stage = "verify"


class StoreNotFoundError(PermanentError):
    """A read-only verb was pointed at a store that does not exist (it is not created)."""

    stage = "verify"


class ObjectMissingError(PermanentError):
    """An object the metadata names is not in the store."""

    stage = "verify"


class StoreConfigError(PermanentError):
    """The object-store URI or its settings are unusable (unknown scheme, no bucket, ...)."""

    stage = "upload"


class StoreAccessDeniedError(PermanentError):
    """The store refused the credentials or the key: retrying with the same settings fails."""

    stage = "upload"


# -- transient ------------------------------------------------------------------------------


class StoreUnavailableError(TransientError):
    """The object store timed out, throttled, or answered 5xx."""

    stage = "upload"


class WriteNotVerifiedError(TransientError):
    """Parts just written do not read back as encoded: redo the upload (same keys)."""

    stage = "verify"


class SourceUnavailableError(TransientError):
    """The export's store is unreachable for now."""

    stage = "source"
