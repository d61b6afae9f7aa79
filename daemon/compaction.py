"""Automatic compaction: a delta that makes its chain too long is followed by a full snapshot.

Every restore of a chain reads all its members, so the daemon keeps chains short on its own
(``AKISNAP_COMPACT_AFTER_DELTAS``). The delta is committed before compaction starts: a failed
compaction loses nothing and is tried again after the next delta, so it is logged and counted,
never a reason to retry or dead-letter the request.
"""

from __future__ import annotations

from daemon.logging import get_logger
from daemon.metrics import Metrics
from handlers.compact import compact
from handlers.create import CreateOutcome, SnapshotCreator
from handlers.errors import AkisnapError
from handlers.job import SnapshotJob
from handlers.metadata import SnapshotMetadata
from handlers.stages import StageClock

log = get_logger("akisnap.compaction")


class CompactingCreator:
    """The creator the daemon runs requests through, compacting long chains after a delta."""

    def __init__(self, creator: SnapshotCreator, metrics: Metrics, after_deltas: int) -> None:
        self._creator = creator
        self._metrics = metrics
        self._after = after_deltas

    async def existing(self, job: SnapshotJob) -> SnapshotMetadata | None:
        return await self._creator.existing(job)

    async def __call__(self, job: SnapshotJob, clock: StageClock) -> CreateOutcome:
        outcome = await self._creator(job, clock)
        if self._after and outcome.metadata.delta is not None and not outcome.duplicate:
            await self._compact_if_long(outcome.metadata)
        return outcome

    async def _compact_if_long(self, delta: SnapshotMetadata) -> None:
        assert delta.delta is not None
        deltas = delta.delta.chain_deltas  # in the metadata: no read of the chain to count
        if deltas < self._after:
            return
        try:
            made = await compact(self._creator, delta)
        except AkisnapError as exc:
            self._metrics.compacted("failed")
            log.warning("compaction.failed", snapshot_id=delta.snapshot_id, error=str(exc))
            return
        self._metrics.compacted("compacted")
        log.info(
            "compaction.done",
            snapshot_id=delta.snapshot_id,
            compacted_snapshot_id=made.snapshot_id,
            deltas=deltas,
        )
