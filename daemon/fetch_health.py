"""Fetch failures, for the consume loop: since when fetching fails (all of it, or one
partition's), counted and logged once when it starts and once when it ends, the reason
``/healthz`` fails after ``fetch_error_unhealthy_seconds``, and which partitions that failed on
their own are held paused (quarantined) a while so the others are served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import TopicPartition

from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.partition import tp_text

log = get_logger("akisnap.consumer")  # the consume loop's logger, as before the split

# A partition whose fetch fails on its own (a batch it cannot read) stays paused this long
# before it is tried again, so the other partitions are served meanwhile.
QUARANTINE_SECONDS = 5.0


class FetchHealth:
    """What fails in fetching, and since when."""

    def __init__(self, metrics: Metrics, unhealthy_seconds: float) -> None:
        self._metrics = metrics
        self._unhealthy_seconds = unhealthy_seconds
        self._failing: tuple[float, str] | None = None
        # Per partition: since when and why its own fetch fails, until when it is held paused.
        self._bad: dict[TopicPartition, tuple[float, str]] = {}
        self._quarantined: dict[TopicPartition, float] = {}

    def trouble(self) -> str | None:
        """Why /healthz should fail for fetching: errors (of every fetch, or of one partition's)
        for longer than the setting."""
        now = _now()
        limit = self._unhealthy_seconds
        if self._failing is not None and now - self._failing[0] > limit:
            since, kind = self._failing
            return f"fetching has failed for {now - since:.0f}s ({kind})"
        for tp, (since, kind) in sorted(self._bad.items()):
            if now - since > limit:
                return f"fetching {tp_text(tp)} has failed for {now - since:.0f}s ({kind})"
        return None

    def failed(self, err: Exception) -> None:
        """Count every failed fetch; log when failing starts (and its kind changes)."""
        kind = type(err).__name__
        self._metrics.fetch_failed(kind)
        if self._failing is None or self._failing[1] != kind:
            log.error("consumer.fetch_failing", error_class=kind, error=str(err))
            since = _now() if self._failing is None else self._failing[0]
            self._failing = (since, kind)

    def worked(self, included: Iterable[TopicPartition]) -> None:
        """A fetch of ``included`` went through: whatever of it was failing has recovered."""
        now = _now()
        if self._failing is not None:
            since, kind = self._failing
            log.info("consumer.fetch_recovered", error_class=kind, seconds=round(now - since, 3))
            self._failing = None
        for tp in set(included) & set(self._bad):
            since, kind = self._bad.pop(tp)
            self._quarantined.pop(tp, None)
            log.info(
                "consumer.partition_fetch_recovered",
                partition=tp_text(tp),
                error_class=kind,
                seconds=round(now - since, 3),
            )

    def quarantine(self, tp: TopicPartition, err: Exception) -> None:
        """``tp`` failed on its own: hold it for a while (the caller pauses it)."""
        now = _now()
        kind = type(err).__name__
        if tp not in self._bad:
            log.error(
                "consumer.partition_fetch_failing",
                partition=tp_text(tp),
                error_class=kind,
                error=str(err),
                note="paused for a while; the other partitions are served",
            )
            self._bad[tp] = (now, kind)
        self._quarantined[tp] = now + QUARANTINE_SECONDS

    def held(self) -> set[TopicPartition]:
        """The partitions quarantined now."""
        now = _now()
        return {tp for tp, until in self._quarantined.items() if until > now}

    def forget(self, tp: TopicPartition) -> None:
        """``tp`` was revoked."""
        self._bad.pop(tp, None)
        self._quarantined.pop(tp, None)


def _now() -> float:
    return asyncio.get_running_loop().time()
