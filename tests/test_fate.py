"""Fate's decisions with a fake creator and publisher: environment faults wait (never dead
letters), an unexpected error is one `internal` dead letter, the deadline dead-letters, publish
retries are capped, broker outages wait, headers are carried.

The real-service versions of these are in tests/test_reliability.py; here each decision is
held deterministically (events, not sleeps).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaConnectionError

from daemon import environment
from daemon.dead_letters.letter import DeadLetter, DeadLetterRecord
from daemon.environment import EnvironmentGate
from daemon.events import build_request
from daemon.fate import Fate
from daemon.metrics import Metrics
from daemon.retry import Backoff
from daemon.verdict import PublishStuckError, Verdict
from handlers.create import CreateOutcome
from handlers.errors import InvalidDocumentsError, StoreCredentialsError
from handlers.job import InlineSource, SnapshotJob
from handlers.metadata import PartInfo, SnapshotMetadata
from handlers.stages import StageClock
from tests.daemon_support import sample
from tests.support import FakeRecord, headers_dict

FAST = Backoff(attempts=3, base_seconds=0.001, cap_seconds=0.01)
DOC = {"id": str(uuid.UUID(int=1)), "vector": [0.5, 0.5]}


def request(headers: list[tuple[str, bytes]] | None = None) -> FakeRecord:
    key, value = build_request("c", InlineSource([DOC]))
    return FakeRecord(value=value, key=key, headers=list(headers or ()))


def metadata(job: SnapshotJob) -> SnapshotMetadata:
    return SnapshotMetadata(
        snapshot_id=job.snapshot_id,
        collection_id=job.collection_id,
        request_id=job.request_id,
        format="parquet",
        compression="zstd",
        dimension=2,
        vector_count=1,
        created_at=datetime.now(UTC).isoformat(),
        parts=(PartInfo("k", 1, 1, "0" * 64),),
    )


class Creator:
    """Runs ``behaviour`` for each attempt (raise to fail it); counts attempts."""

    def __init__(self, behaviour: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.behaviour = behaviour
        self.attempts = 0

    async def existing(self, job: SnapshotJob) -> SnapshotMetadata | None:
        return None

    async def __call__(self, job: SnapshotJob, clock: StageClock) -> CreateOutcome:
        self.attempts += 1
        async with clock("upload"):
            if self.behaviour is not None:
                await self.behaviour(self.attempts)
        return CreateOutcome(metadata(job), duplicate=False)


class Publisher:
    """Records what was published; ``fail_result`` decides whether a result send fails."""

    def __init__(self, fail_result: Callable[[int], Exception | None] | None = None) -> None:
        self.results: list[tuple[bytes, list[tuple[str, bytes]]]] = []
        self.letters: list[DeadLetter] = []
        self.sends = 0
        self._fail = fail_result
        self.broken_value = False

    def result_value(self, job: SnapshotJob, outcome: CreateOutcome, durations: object) -> bytes:
        if self.broken_value:
            raise ValueError("the result model refuses this metadata")
        return job.request_id.encode()

    async def result(
        self, job: SnapshotJob, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        self.sends += 1
        error = self._fail(self.sends) if self._fail else None
        if error is not None:
            raise error
        self.results.append((value, list(headers or ())))

    async def dead_letter(self, letter: DeadLetter) -> None:
        self.letters.append(letter)


class Probe:
    """A probe that fails until ``fixed`` is set."""

    def __init__(self) -> None:
        self.fixed = asyncio.Event()
        self.calls = 0
        self.many_calls = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls >= 20:
            self.many_calls.set()
        if not self.fixed.is_set():
            raise StoreCredentialsError("still refused")


def make_fate(
    creator: Creator,
    publisher: Publisher,
    metrics: Metrics,
    gate: EnvironmentGate | None = None,
    **options: float,
) -> Fate:
    return Fate(
        creator=creator,
        publisher=publisher,  # type: ignore[arg-type]
        backoff=FAST,
        metrics=metrics,
        max_message_bytes=1 << 20,
        gate=gate,
        **options,  # type: ignore[arg-type]
    )


def quick_gate(metrics: Metrics, probe: Probe) -> EnvironmentGate:
    return EnvironmentGate(
        metrics,
        {"store": probe, "broker": probe},
        backoff=Backoff(attempts=1, base_seconds=0.001, cap_seconds=0.005),
    )


async def test_environment_fault_waits_instead_of_dead_lettering() -> None:
    """Refused credentials: no dead letter and no attempt used up, however many probes fail;
    the gate is shut (the consumer pauses, /readyz says why); once the probe passes, the
    request is done."""
    metrics = Metrics()
    probe = Probe()
    gate = quick_gate(metrics, probe)
    refused = asyncio.Event()

    async def denied_until_fixed(_attempt: int) -> None:
        if not probe.fixed.is_set():
            refused.set()
            raise StoreCredentialsError("InvalidAccessKeyId")

    creator, publisher = Creator(denied_until_fixed), Publisher()
    fate = make_fate(creator, publisher, metrics, gate)
    task = asyncio.create_task(fate(request(), asyncio.Event()))
    await refused.wait()
    await probe.many_calls.wait()  # far more than FAST's 3 attempts
    assert not gate.is_open
    assert "store_credentials_refused" in gate.reason
    assert sample(metrics, "akisnap_environment_paused") == 1
    assert not task.done()
    probe.fixed.set()
    settled = await asyncio.wait_for(task, 5)

    assert settled.verdict is Verdict.CREATED
    assert publisher.letters == []
    assert gate.is_open
    assert sample(metrics, "akisnap_environment_paused") == 0
    assert sample(metrics, "akisnap_environment_errors_total", kind="store_credentials_refused") > 1


async def test_working_clock_leaves_out_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline's clock stands still while the gate is shut, and runs again after."""
    now = [1000.0]
    monkeypatch.setattr(environment, "time", SimpleNamespace(monotonic=lambda: now[0]))
    metrics = Metrics()
    probe = Probe()
    gate = quick_gate(metrics, probe)
    before = gate.working_clock()
    now[0] += 2
    gate.trip(StoreCredentialsError("x"))
    now[0] += 60
    assert gate.working_clock() - before == 2
    probe.fixed.set()
    assert await gate.wait_open(asyncio.Event())
    now[0] += 3
    assert gate.working_clock() - before == 5
    await gate.close()


async def test_result_that_cannot_be_built_is_one_internal_dead_letter() -> None:
    metrics = Metrics()
    publisher = Publisher()
    publisher.broken_value = True
    settled = await make_fate(Creator(), publisher, metrics)(request(), asyncio.Event())

    assert settled.verdict is Verdict.DEAD_LETTERED
    [letter] = publisher.letters
    headers = headers_dict(letter.headers)
    assert headers["akisnap.error.stage"] == "internal"
    assert headers["akisnap.error.class"] == "ValueError"
    assert sample(metrics, "akisnap_internal_errors_total") == 1
    assert sample(metrics, "akisnap_dlq_messages_total", stage="internal") == 1


async def test_past_its_deadline_is_dead_lettered_retryable() -> None:
    async def hangs(_attempt: int) -> None:
        await asyncio.Event().wait()

    publisher = Publisher()
    fate = make_fate(Creator(hangs), publisher, Metrics(), deadline_seconds=0.2)
    settled = await asyncio.wait_for(fate(request(), asyncio.Event()), 5)

    assert settled.verdict is Verdict.DEAD_LETTERED
    headers = headers_dict(publisher.letters[0].headers)
    assert headers["akisnap.error.class"] == "DeadlineExceeded"
    assert headers["akisnap.error.retryable"] == "true"
    assert headers["akisnap.error.stage"] == "upload"


async def test_publishing_gives_up_after_the_cap() -> None:
    """A result the broker keeps refusing (not unreachable): counted, then PublishStuckError."""
    metrics = Metrics()
    publisher = Publisher(lambda _n: ValueError("topic authorization failed"))
    fate = make_fate(Creator(), publisher, metrics, publish_attempts=4)
    with pytest.raises(PublishStuckError):
        await fate(request(), asyncio.Event())
    assert publisher.sends == 4
    assert sample(metrics, "akisnap_publish_retries_total", what="result") == 4
    assert sample(metrics, "akisnap_publish_stuck") == 1


async def test_broker_unavailable_while_publishing_waits_without_using_attempts() -> None:
    metrics = Metrics()
    probe = Probe()
    probe.fixed.set()
    gate = quick_gate(metrics, probe)
    publisher = Publisher(lambda n: KafkaConnectionError("down") if n <= 5 else None)
    fate = make_fate(Creator(), publisher, metrics, gate, publish_attempts=2)
    settled = await asyncio.wait_for(fate(request(), asyncio.Event()), 5)

    assert settled.verdict is Verdict.CREATED
    assert publisher.sends == 6
    assert sample(metrics, "akisnap_environment_errors_total", kind="broker_unavailable") == 5
    assert sample(metrics, "akisnap_publish_retries_total", what="result") == 0


async def test_headers_reach_the_result_and_the_dead_letter() -> None:
    trace = [
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("tracestate", b"vendor=x"),
        ("akisnap.error.stage", b"stale"),  # ours to set: not carried
    ]
    publisher = Publisher()
    await make_fate(Creator(), publisher, Metrics())(request(trace), asyncio.Event())
    [(_, headers)] = publisher.results
    assert headers == trace[:2]

    async def bad(_attempt: int) -> None:
        raise InvalidDocumentsError("NaN")

    await make_fate(Creator(bad), publisher, Metrics())(request(trace), asyncio.Event())
    letter = publisher.letters[0]
    assert letter.headers[:2] == trace[:2]
    assert headers_dict(letter.headers)["akisnap.error.stage"] == "validate"
    assert [k for k, _ in letter.headers].count("akisnap.error.stage") == 1


@pytest.mark.parametrize(
    ("value", "creator_raises", "stage"),
    [
        (b'{"schema": "akisnap.snapshot-request/v1"}', None, "validate"),  # breaks the contract
        (b"\xff not json", None, "decode"),
        (None, InvalidDocumentsError("NaN in a vector"), "validate"),  # found while creating
        (None, RuntimeError("a bug"), "upload"),  # the running stage, once retries run out
    ],
)
async def test_a_dead_letters_stage_is_the_stage_its_time_is_recorded_under(
    value: bytes | None, creator_raises: Exception | None, stage: str
) -> None:
    """One clock names the stage: the dead letter's stage, dlq_messages_total and the stage
    histogram agree, and no other stage of the failed attempt is left without its time."""

    async def fails(_attempt: int) -> None:
        if creator_raises is not None:
            raise creator_raises

    metrics = Metrics()
    publisher = Publisher()
    record = request() if value is None else FakeRecord(value=value, key=b"c", headers=[])
    settled = await make_fate(Creator(fails), publisher, metrics)(record, asyncio.Event())

    assert settled.verdict is Verdict.DEAD_LETTERED
    assert headers_dict(publisher.letters[0].headers)["akisnap.error.stage"] == stage
    assert sample(metrics, "akisnap_dlq_messages_total", stage=stage) == 1
    assert sample(metrics, "akisnap_stage_duration_seconds_count", stage=stage) >= 1


def test_both_dead_letter_views_read_the_last_header_of_a_name() -> None:
    """The letter the daemon builds and the record the tools read agree (Kafka's lastHeader)."""
    headers = [("akisnap.replay.count", b"1"), ("akisnap.replay.count", b"2")]
    built = DeadLetter(key=None, value=None, headers=headers)
    read = DeadLetterRecord("dlq", 0, 0, 0, None, None, tuple(headers))
    assert built.header("akisnap.replay.count") == read.header("akisnap.replay.count") == "2"
    assert read.replay_count == 2
