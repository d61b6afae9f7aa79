"""The Prometheus metrics of DESIGN.md ('Metrics', prefix ``akisnap_``), on a registry of
their own so tests can make as many as they like.

They are recorded by the daemon, never inside the handlers: the stages as the
:class:`~handlers.stages.StageClock` times them (``stage_observed``), per request
(``request_finished``), the in-flight request gauge by the consumer's ``InFlight`` and the
in-flight bytes gauge by the creator's ``ByteBudget`` callback.
"""

from __future__ import annotations

import contextlib
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from daemon import __version__
from handlers.metadata import SnapshotMetadata
from handlers.stages import STAGES

PREFIX = "akisnap_"
# What generate_latest() writes (prometheus-client's own server sends the same).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = ("created", "dead_lettered", "duplicate")
SNAPSHOT_KINDS = ("full", "delta")
COMPACTION_OUTCOMES = ("compacted", "failed")
# Dead-letter stages beyond the pipeline's: a bug in deciding a request's outcome.
DEAD_LETTER_STAGES = (*STAGES, "internal")
ENVIRONMENT_KINDS = (
    "store_unreachable",
    "store_credentials_refused",
    "store_permission_denied",
    "store_bucket_missing",
    "store_misconfigured",
    "broker_unavailable",
)
PUBLISHED = ("result", "dead_letter")
# From a few milliseconds (decode, validate) to minutes (a large upload).
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
# JSON-equivalent bytes / stored bytes: below 1 is a loss, float32 Parquet lands around 2-4.
RATIO_BUCKETS = (
    0.5,
    0.75,
    1.0,
    1.25,
    1.5,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    7.5,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
)

DESIGN_METRIC_NAMES = (
    "akisnap_requests_total",
    "akisnap_request_duration_seconds",
    "akisnap_stage_duration_seconds",
    "akisnap_retries_total",
    "akisnap_dlq_messages_total",
    "akisnap_snapshot_bytes_total",
    "akisnap_vectors_total",
    "akisnap_snapshots_total",
    "akisnap_delta_bytes_saved_total",
    "akisnap_compactions_total",
    "akisnap_compression_ratio",
    "akisnap_in_flight_requests",
    "akisnap_in_flight_bytes",
    "akisnap_consumer_lag",
    "akisnap_last_success_timestamp_seconds",
    "akisnap_build_info",
    "akisnap_environment_errors_total",
    "akisnap_environment_paused",
    "akisnap_publish_retries_total",
    "akisnap_publish_stuck",
    "akisnap_fetch_errors_total",
    "akisnap_internal_errors_total",
)
"""The exported metric family names (as in ``# TYPE`` lines; histograms add _bucket, _sum,
_count to their samples)."""


class Metrics:
    """All of akisnap's metrics, on ``registry`` (a new one by default, never the global)."""

    content_type = CONTENT_TYPE

    def __init__(
        self, registry: CollectorRegistry | None = None, *, version: str = __version__
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "akisnap_requests_total",
            "Requests that reached a terminal state, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.request_duration = Histogram(
            "akisnap_request_duration_seconds",
            "Time from a request's arrival to its terminal state (result or dead letter).",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "akisnap_stage_duration_seconds",
            "Time spent in each pipeline stage, failed attempts included.",
            ["stage"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "akisnap_retries_total",
            "Retries of a stage after a transient error.",
            ["stage"],
            registry=r,
        )
        self.dlq_messages = Counter(
            "akisnap_dlq_messages_total",
            "Requests sent to the dead-letter topic, by failing stage.",
            ["stage"],
            registry=r,
        )
        self.snapshot_bytes = Counter(
            "akisnap_snapshot_bytes_total",
            "Bytes of snapshot parts and side objects written.",
            registry=r,
        )
        self.vectors = Counter("akisnap_vectors_total", "Vectors written to snapshots.", registry=r)
        self.snapshots = Counter(
            "akisnap_snapshots_total", "Snapshots created, by kind (full, delta).", ["kind"],
            registry=r,
        )  # fmt: skip
        self.delta_bytes_saved = Counter(
            "akisnap_delta_bytes_saved_total",
            "Bytes deltas did not write: a full snapshot's estimate minus what they wrote.",
            registry=r,
        )
        self.compactions = Counter(
            "akisnap_compactions_total",
            "Automatic compactions of long delta chains, by outcome (compacted, failed).",
            ["outcome"],
            registry=r,
        )
        self.compression_ratio = Histogram(
            "akisnap_compression_ratio",
            "JSON-equivalent bytes / stored bytes per snapshot.",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.in_flight_requests = Gauge(
            "akisnap_in_flight_requests", "Requests being processed now.", registry=r
        )
        self.in_flight_bytes = Gauge(
            "akisnap_in_flight_bytes",
            "Bytes the requests being processed hold (export size or decoded inline payload).",
            registry=r,
        )
        self.store_feature = Gauge(
            "akisnap_store_feature",
            "1 when the object store has the feature and akisnap uses it, 0 on the fallback.",
            ["feature"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "akisnap_consumer_lag",
            "Messages behind: high-water mark minus committed offset, per partition.",
            ["topic", "partition"],
            registry=r,
        )
        # Beyond DESIGN's list: commits that failed (their requests are redone idempotently).
        self.commit_failures = Counter(
            "akisnap_commit_failures_total",
            "Offset commits that failed (the requests behind them are redone, idempotently).",
            ["reason"],
            registry=r,
        )
        self.environment_errors = Counter(
            "akisnap_environment_errors_total",
            "Environment faults seen (store unreachable, credentials refused, ...), by kind.",
            ["kind"],
            registry=r,
        )
        self.environment_paused = Gauge(
            "akisnap_environment_paused",
            "1 while consumption is paused for an environment fault, else 0.",
            registry=r,
        )
        self.publish_retries = Counter(
            "akisnap_publish_retries_total",
            "Failed attempts to publish a result or a dead letter (then retried).",
            ["what"],
            registry=r,
        )
        self.publish_stuck = Gauge(
            "akisnap_publish_stuck",
            "Partitions whose result or dead letter could not be published within the retry cap.",
            registry=r,
        )
        self.fetch_errors = Counter(
            "akisnap_fetch_errors_total",
            "Failed fetches of request records (e.g. an unsupported codec), by error class.",
            ["kind"],
            registry=r,
        )
        self.internal_errors = Counter(
            "akisnap_internal_errors_total",
            "Unexpected errors (bugs) while deciding a request's outcome.",
            registry=r,
        )
        self.last_success = Gauge(
            "akisnap_last_success_timestamp_seconds",
            "Unix time of the last snapshot created.",
            registry=r,
        )
        self.build_info = Gauge(
            "akisnap_build_info", "Always 1; the version in a label.", ["version"], registry=r
        )
        self.build_info.labels(version=version).set(1)
        for outcome in OUTCOMES:
            self.requests.labels(outcome=outcome)
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)
            self.retries.labels(stage=stage)
        for stage in DEAD_LETTER_STAGES:
            self.dlq_messages.labels(stage=stage)
        for kind in ENVIRONMENT_KINDS:
            self.environment_errors.labels(kind=kind)
        for what in PUBLISHED:
            self.publish_retries.labels(what=what)
        for kind in SNAPSHOT_KINDS:
            self.snapshots.labels(kind=kind)
        for outcome in COMPACTION_OUTCOMES:
            self.compactions.labels(outcome=outcome)

    def compacted(self, outcome: str) -> None:
        self.compactions.labels(outcome=outcome).inc()

    def stage_observed(self, stage: str, seconds: float) -> None:
        """A stage ended (a failed one under the stage it is blamed on: handlers.stages)."""
        self.stage_duration.labels(stage=stage).observe(seconds)

    def request_finished(self, outcome: str, seconds: float) -> None:
        self.requests.labels(outcome=outcome).inc()
        self.request_duration.observe(seconds)

    def snapshot_created(self, meta: SnapshotMetadata) -> None:
        self.snapshot_bytes.inc(meta.written_bytes)
        self.vectors.inc(meta.vector_count)
        self.snapshots.labels(kind=meta.kind).inc()
        self.delta_bytes_saved.inc(meta.bytes_saved)
        if meta.total_bytes and meta.json_equivalent_bytes:
            self.compression_ratio.observe(meta.json_equivalent_bytes / meta.total_bytes)
        self.last_success.set(time.time())

    def retried(self, stage: str) -> None:
        self.retries.labels(stage=stage).inc()

    def dead_lettered(self, stage: str) -> None:
        self.dlq_messages.labels(stage=stage).inc()

    def environment_error(self, kind: str) -> None:
        self.environment_errors.labels(kind=kind).inc()

    def publish_retried(self, what: str) -> None:
        self.publish_retries.labels(what=what).inc()

    def fetch_failed(self, kind: str) -> None:
        self.fetch_errors.labels(kind=kind).inc()

    def commit_failed(self, reason: str) -> None:
        self.commit_failures.labels(reason=reason).inc()

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lag.labels(topic=topic, partition=str(partition)).set(max(lag, 0))

    def clear_lag(self, topic: str, partition: int) -> None:
        """Forget a partition this member no longer owns (after a rebalance)."""
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(topic, str(partition))

    def render(self) -> bytes:
        """The exposition text served at /metrics (``content_type``)."""
        return generate_latest(self.registry)
