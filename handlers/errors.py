"""The three kinds of failure, and what the daemon does with each:

- permanent: the request itself is wrong (bad input) → dead letter at once;
- transient: a dependency failed for now (5xx, throttling, a timeout) → retry this request
  with backoff, dead letter (``retryable=true``) when the attempts run out;
- environment: not the request's fault and not momentary (store unreachable, credentials
  refused, bucket missing, permission denied, broker unavailable) → pause every partition,
  turn not-ready, probe until it is fixed, then go on; never dead-lettered.

Handlers only raise; the daemon decides commit, retry, wait or dead letter from the kind alone.
Every error carries the pipeline stage it belongs to, which becomes the dead-letter header
``akisnap.error.stage``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
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


class SelectionError(InvalidRequestError):
    """A partial restore's --columns, --where or --limit that the grammar refuses (usage)."""


class IdsNotFoundError(InvalidRequestError):
    """A strict partial restore asked for ids the snapshot does not hold."""


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


# -- environment ----------------------------------------------------------------------------


class EnvironmentFaultError(AkisnapError):
    """The environment is wrong, not the request: wait for it to be fixed, never dead-letter.

    ``kind`` names what is wrong (the ``kind`` label of ``environment_errors_total``);
    ``component`` names what to probe until it answers again (``store`` or ``broker``).
    """

    retryable: ClassVar[bool] = True
    kind: ClassVar[str] = "environment"
    component: ClassVar[str] = "store"
    stage = "upload"


class StoreUnreachableError(EnvironmentFaultError):
    """The object store's endpoint cannot be connected to (refused, no route, DNS)."""

    kind = "store_unreachable"


class StoreAccessDeniedError(EnvironmentFaultError):
    """The store refused the operation on this bucket or key (permission denied)."""

    kind = "store_permission_denied"


class StoreCredentialsError(StoreAccessDeniedError):
    """The store refused the credentials themselves (unknown key, bad signature, expired)."""

    kind = "store_credentials_refused"


class BucketMissingError(EnvironmentFaultError):
    """The configured bucket does not exist (deleted, or not created yet)."""

    kind = "store_bucket_missing"


class StoreMisconfiguredError(EnvironmentFaultError):
    """The store cannot serve what the settings ask for (server-side encryption not
    implemented, KMS key missing, wrong region): fixed by the operator, not by retrying."""

    kind = "store_misconfigured"


class BrokerUnavailableError(EnvironmentFaultError):
    """The Kafka broker cannot be reached (connection refused, request timed out)."""

    kind = "broker_unavailable"
    component = "broker"
    stage = "publish"


def first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error in a task group's exception group (depth first), so callers see
    our error rather than a group: cancellations of the sibling tasks are not causes."""
    leaves = list(_leaves(group))
    # Not imported at the top: `akisnap --help` imports this module and must stay fast; with
    # asyncio not loaded, nothing can be a CancelledError.
    asyncio = sys.modules.get("asyncio")
    cancelled = asyncio.CancelledError if asyncio is not None else ()
    real = [leaf for leaf in leaves if not isinstance(leaf, cancelled)]
    return (real or leaves)[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
