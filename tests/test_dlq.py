"""`akisnap dlq list|replay` against the real Kafka broker (and S3 server) of `make services`.

Each test makes its own topics (`make_topics`, 4 partitions, auto-create is off) and its own
replay consumer group, produces dead letters carrying the DESIGN headers, and reads back what
the replay published.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.dead_letters.progress import PartitionProgress, decode_progress, encode_progress
from daemon.dead_letters.reading import (
    DlqFilter,
    TopicMissingError,
    list_dead_letters,
    parse_when,
)
from daemon.dead_letters.replay import Replayer, ReplayObserver, ReplayOptions
from daemon.events import build_request
from daemon.kafka import KafkaClients
from handlers.job import InlineSource, snapshot_id_for
from tests.daemon_support import (
    Answers503,
    create_topics,
    read_topic,
    running,
    s3_settings,
    send,
    settings_for,
    snapshot_ids,
    until,
)
from tests.support import S3Service, TopicFactory, Topics, run_cli

Header = tuple[str, bytes]
Letter = tuple[bytes, bytes, list[Header], int | None]


def request(collection: str, rows: int = 3) -> tuple[str, bytes, bytes]:
    rid = str(uuid.uuid4())
    docs = [{"id": str(uuid.uuid4()), "vector": [0.5 + i, -0.25, 1e-3, 3.0]} for i in range(rows)]
    key, value = build_request(collection, InlineSource(docs), request_id=rid)
    return rid, key, value


def dead_letter_headers(
    stage: str, error_class: str, *, replays: int | None = None, offset: int = 7
) -> list[Header]:
    """The DESIGN headers of a dead letter (akisnap.replay.count only on replays)."""
    headers = [
        ("akisnap.error.stage", stage.encode()),
        ("akisnap.error.class", error_class.encode()),
        ("akisnap.error.message", f"{error_class} happened".encode()),
        ("akisnap.error.retryable", b"true" if stage == "upload" else b"false"),
        ("akisnap.attempts", b"5"),
        ("akisnap.original.topic", b"akidb.snapshot.requests"),
        ("akisnap.original.partition", b"1"),
        ("akisnap.original.offset", str(offset).encode()),
        ("akisnap.original.timestamp", b"1764000000000"),
        ("akisnap.failed_at", b"2026-11-24T10:00:00.000Z"),
    ]
    if replays is not None:
        headers.append(("akisnap.replay.count", str(replays).encode()))
    return headers


async def produce(bootstrap: str, topic: str, letters: list[Letter]) -> None:
    """Publish (key, value, headers, timestamp or None) messages."""
    await send(bootstrap, topic, [m[:3] for m in letters], [m[3] for m in letters])


Letters = dict[str, tuple[bytes, bytes]]


@pytest.fixture
async def seeded(kafka_bootstrap: str, make_topics: TopicFactory) -> tuple[Topics, Letters]:
    """Six dead letters: 3 upload (collections a, a, b), 2 validate, 1 decode replayed once,
    plus one upload letter from two days ago."""
    topics = await make_topics()
    plan = [
        ("u1", "a", "upload", "StoreUnavailableError", None, None),
        ("v1", "a", "validate", "InvalidRequestError", None, None),
        ("u2", "a", "upload", "StoreUnavailableError", None, None),
        ("d1", "c", "decode", "DecodeError", 1, None),
        ("u3", "b", "upload", "StoreUnavailableError", None, None),
        ("v2", "b", "validate", "InvalidDocumentsError", None, None),
        ("old", "a", "upload", "StoreUnavailableError", None, 2),
    ]
    letters: Letters = {}
    messages: list[Letter] = []
    now_ms = int(time.time() * 1000)
    for name, collection, stage, error, replays, days_ago in plan:
        _, key, value = request(collection)
        letters[name] = (key, value)
        stamp = now_ms - days_ago * 86_400_000 if days_ago else None
        messages.append((key, value, dead_letter_headers(stage, error, replays=replays), stamp))
    await produce(kafka_bootstrap, topics.dlq, messages)
    return topics, letters


async def test_list_filters(
    kafka_bootstrap: str, seeded: tuple[Topics, Letters], tmp_path: Path
) -> None:
    """list reads every dead letter with its headers; each filter narrows it."""
    topics, letters = seeded
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    everything = await list_dead_letters(settings)
    assert len(everything) == 7
    assert {(d.key, d.value) for d in everything} == set(letters.values())
    first = everything[0].to_dict()
    assert first["original_topic"] == "akidb.snapshot.requests" and first["attempts"] == 5
    assert everything[0].value == letters["old"][1]  # oldest first

    async def names(**where: Any) -> set[str]:
        found = await list_dead_letters(settings, DlqFilter(**where))
        by_value = {value: name for name, (_, value) in letters.items()}
        return {by_value[d.value or b""] for d in found}

    assert await names(stage="upload") == {"u1", "u2", "u3", "old"}
    assert await names(error_class="InvalidDocumentsError") == {"v2"}
    assert await names(collection="a") == {"u1", "v1", "u2", "old"}
    assert await names(stage="upload", collection="b") == {"u3"}
    recent = parse_when("1d")
    assert await names(stage="upload", since=recent) == {"u1", "u2", "u3"}
    assert await names(until=recent) == {"old"}
    assert len(await list_dead_letters(settings, DlqFilter(stage="upload"), limit=2)) == 2
    [decode] = await list_dead_letters(settings, DlqFilter(stage="decode"))
    assert decode.replay_count == 1 and decode.collection_id == "c"


async def test_replay_byte_for_byte_and_only_once(
    kafka_bootstrap: str, seeded: tuple[Topics, Letters], tmp_path: Path
) -> None:
    """replay --stage upload re-publishes key and value untouched with replay.count + 1;
    a second run replays nothing; the letters it skipped are still there for other filters."""
    topics, letters = seeded
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    group = f"replay-{uuid.uuid4().hex[:8]}"
    upload = ReplayOptions(where=DlqFilter(stage="upload"), rate_per_second=0, group_id=group)

    dry = await Replayer(settings, ReplayOptions(**{**upload.__dict__, "dry_run": True}))()
    assert dry.count("would_replay") == 4 and not await read_topic(kafka_bootstrap, topics.requests)

    first = await Replayer(settings, upload)()
    assert first.count("replayed") == 4 and first.not_matching == 3
    sent = await read_topic(kafka_bootstrap, topics.requests)
    assert sorted((r.key, r.value) for r in sent) == sorted(
        letters[name] for name in ("u1", "u2", "u3", "old")
    )
    assert all(list(r.headers) == [("akisnap.replay.count", b"1")] for r in sent)

    second = await Replayer(settings, upload)()
    assert second.count("replayed") == 0 and second.already_replayed == 4
    assert len(await read_topic(kafka_bootstrap, topics.requests)) == 4

    everything = ReplayOptions(rate_per_second=0, group_id=group)
    rest = await Replayer(settings, everything)()
    assert rest.count("replayed") == 3 and rest.already_replayed == 4
    sent = await read_topic(kafka_bootstrap, topics.requests)
    assert len(sent) == 7
    decode = [r for r in sent if (r.key, r.value) == letters["d1"]]
    assert [list(r.headers) for r in decode] == [[("akisnap.replay.count", b"2")]]
    assert (await Replayer(settings, everything)()).count("replayed") == 0


async def test_replay_cap_refuses(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """A dead letter replayed max times already is refused, with the reason, and stays
    refusable (not marked done); a higher cap replays it. --limit and the rate hold."""
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    _, key, value = request("poison")
    fine = [request("ok")[1:] for _ in range(4)]
    await produce(
        kafka_bootstrap,
        topics.dlq,
        [(key, value, dead_letter_headers("verify", "CorruptSnapshotError", replays=3), None)]
        + [(k, v, dead_letter_headers("upload", "StoreUnavailableError"), None) for k, v in fine],
    )
    group = f"replay-{uuid.uuid4().hex[:8]}"
    acted: list[str] = []

    class Lines(ReplayObserver):
        def acted(self, action: Any) -> None:
            acted.append(f"{action.action}: {action.reason}")

    capped = ReplayOptions(where=DlqFilter(stage="verify"), group_id=group)
    report = await Replayer(settings, capped, Lines())()
    assert report.count("refused") == 1 and report.count("replayed") == 0
    assert acted == ["refused: replayed 3 time(s) already; the maximum is 3"]
    again = await Replayer(settings, capped)()
    assert again.count("refused") == 1  # still there, still refused
    raised = ReplayOptions(where=DlqFilter(stage="verify"), group_id=group, max_replays=4)
    assert (await Replayer(settings, raised)()).count("replayed") == 1
    [sent] = await read_topic(kafka_bootstrap, topics.requests)
    assert (sent.key, sent.value, list(sent.headers)) == (
        key,
        value,
        [("akisnap.replay.count", b"4")],
    )

    paced = ReplayOptions(group_id=group, rate_per_second=20, limit=3)
    started = time.monotonic()
    limited = await Replayer(settings, paced)()
    assert limited.count("replayed") == 3 and time.monotonic() - started >= 0.09
    assert (await Replayer(settings, paced)()).count("replayed") == 1


async def test_missing_topic_is_a_clear_error(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A DLQ topic that does not exist is reported as such (nothing is auto-created)."""
    topics = Topics(f"nope.{uuid.uuid4().hex}", "r", f"nope.{uuid.uuid4().hex}.dlq", "g")
    with pytest.raises(TopicMissingError, match="does not exist"):
        await list_dead_letters(settings_for(kafka_bootstrap, topics, tmp_path))


def test_progress_record_round_trip() -> None:
    """The group's progress: committed offset = first not-done letter, done ones above it."""
    state = PartitionProgress(committed=10, handled=[[14, 15]])
    state.begin(10)
    for offset, done in [(10, True), (11, False), (12, True), (13, True), (14, True), (16, True)]:
        state.saw(offset, handled=done)
    low, text = state.commit_point()
    assert (low, text) == (11, "akisnap-dlq/1 1-5")
    assert decode_progress(low, text) == [[12, 16]]
    assert encode_progress(5, []) == "akisnap-dlq/1" and decode_progress(5, "other") == []
    ahead = PartitionProgress(committed=3)
    ahead.begin(8)  # --since skipped 3..7: they stay not done
    ahead.saw(8, handled=True)
    assert ahead.commit_point() == (3, "akisnap-dlq/1 5")
    assert parse_when("2026-11-24") == datetime(2026, 11, 24, tzinfo=UTC)
    assert datetime.now(UTC) - parse_when("90m") > timedelta(minutes=89)


def test_dlq_cli(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dlq list` prints a table (or JSON); `dlq replay` prints one line per message."""
    topics = asyncio.run(_seed_for_cli(kafka_bootstrap))
    try:
        _cli_checks(kafka_bootstrap, topics, monkeypatch)
    finally:
        asyncio.run(_delete_topics(kafka_bootstrap, topics.names))


def _cli_checks(kafka_bootstrap: str, topics: Topics, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKISNAP_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("AKISNAP_DLQ_TOPIC", topics.dlq)
    monkeypatch.setenv("AKISNAP_REQUEST_TOPIC", topics.requests)
    code, out, err = run_cli(["dlq", "list"])
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == [
        "TIME", "DLQ", "ORIGINAL", "STAGE", "ERROR", "COLLECTION", "REPLAYS", "MESSAGE",
    ]  # fmt: skip
    assert len(rows) == 2 and "akidb.snapshot.requests[1]@7" in rows[0]
    code, out, _ = run_cli(["dlq", "list", "--stage", "upload", "--json"])
    assert code == 0 and [d["collection_id"] for d in json.loads(out)] == ["cli"]
    group = ["--group", f"cli-{uuid.uuid4().hex[:8]}", "--rate", "0"]
    code, out, _ = run_cli(["dlq", "replay", "--stage", "upload", *group])
    assert code == 0 and out.startswith("replayed (replay 1)") and "replayed 1, refused 0" in out
    code, out, _ = run_cli(["dlq", "replay", *group, "--max-replays", "1", "--json"])
    body = json.loads(out)
    assert (body["replayed"], body["refused"], body["already_replayed"]) == (0, 1, 1)
    code, _, err = run_cli(["dlq", "list", "--since", "yesterday-ish"])
    assert code == 2 and "cannot read the time" in err


async def _seed_for_cli(bootstrap: str) -> Topics:
    """Own topics (the CLI runs its own event loop, not the session one of make_topics)."""
    topics = await create_topics(bootstrap, Topics.fresh(), partitions=2)
    _, key, value = request("cli")
    _, key2, value2 = request("cli2")
    await produce(
        bootstrap,
        topics.dlq,
        [
            (key, value, dead_letter_headers("upload", "StoreUnavailableError"), None),
            (key2, value2, dead_letter_headers("decode", "DecodeError", replays=1), None),
        ],
    )
    return topics


async def _delete_topics(bootstrap: str, names: tuple[str, ...]) -> None:
    admin = KafkaClients(bootstrap).admin()
    await admin.start()
    try:
        await admin.delete_topics(list(names))
    finally:
        await admin.close()


# -- end to end: the store was down, dead letters, store back, replay → snapshots ------------


async def test_store_down_dead_letters_then_replay_makes_snapshots(
    kafka_bootstrap: str, make_topics: TopicFactory, s3_service: S3Service, tmp_path: Path
) -> None:
    """S3 answering 503 (a transient failure that outlasts the retries) → upload dead letters;
    S3 fine → `replay --stage upload` turns each into exactly one snapshot, and a second replay
    replays nothing. (An S3 that cannot be reached at all is waited out instead: no letters.)"""
    topics = await make_topics()
    common: dict[str, Any] = {
        "retry_attempts": 2,
        "retry_base_seconds": 0.05,
        "retry_cap_seconds": 0.1,
        "shutdown_grace_seconds": 6.0,
    }
    overloaded = Answers503()
    up = s3_settings(kafka_bootstrap, topics, tmp_path, s3_service, **common)
    down = up.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{overloaded.port}"})
    requests = [request(f"col{i % 2}") for i in range(3)]
    _, bad_key, bad_value = request("bad")
    broken = bad_value.replace(b'"schema"', b'"schemaa"')
    await produce(
        kafka_bootstrap,
        topics.requests,
        [(key, value, [], None) for _, key, value in requests] + [(bad_key, broken, [], None)],
    )

    async def dead_letters() -> bool:
        return len(await read_topic(kafka_bootstrap, topics.dlq)) >= 4

    async with overloaded, running(down):
        await until(dead_letters, 60, "4 dead letters")
    letters = await list_dead_letters(down)
    assert sorted(d.stage for d in letters) == ["upload", "upload", "upload", "validate"]
    assert await snapshot_ids(up) == []

    replay = ReplayOptions(where=DlqFilter(stage="upload"), rate_per_second=0)
    expected = sorted(snapshot_id_for(key.decode(), rid) for rid, key, _ in requests)

    async def created() -> bool:
        return sorted(await snapshot_ids(up)) == expected

    async with running(up):
        first = await Replayer(up, replay)()
        assert first.count("replayed") == 3
        await until(created, 60, "3 snapshots")
        second = await Replayer(up, replay)()
        assert second.count("replayed") == 0 and second.already_replayed == 3
    assert await created()
