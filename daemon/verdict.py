"""What a request comes to: a terminal state (:class:`Settled`), or given up before one."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    """The terminal states of a request (the ``outcome`` label of ``requests_total``)."""

    CREATED = "created"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True)
class Settled:
    """A request that reached a terminal state (its result or dead letter acknowledged by the
    broker): its offset may be committed. "Settled" means this and nothing else."""

    verdict: Verdict
    seconds: float
    request_id: str | None = None
    snapshot_id: str | None = None
    stage: str | None = None


class AbandonedError(Exception):
    """Told to stop before the request was settled; do not commit its offset."""


class PublishStuckError(AbandonedError):
    """A result or dead letter could not be published within the attempts: the partition
    stops here (its offset uncommitted) and the daemon reports itself unhealthy."""
