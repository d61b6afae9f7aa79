"""``akisnap run``, ``akisnap request`` and ``akisnap demo``: the verbs that talk to Kafka."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaError

from daemon.app import Daemon
from daemon.cli.common import (
    deleted_ids,
    emit,
    fail,
    labels_from,
    load_settings,
)
from daemon.dead_letters.letter import H_CLASS, H_MESSAGE, H_STAGE, safe_message
from daemon.demo import random_documents, run_demo
from daemon.events import build_request
from daemon.exit_codes import BAD_INPUT, ENVIRONMENT, UsageError, os_error_text
from daemon.kafka_explain import explain_kafka_failure
from daemon.logging import configure_logging
from daemon.outcomes import Outcome, OutcomeWatcher
from daemon.send_requests import publish
from daemon.settings import BOOTSTRAP_HINT, Settings
from handlers.job import (
    InlineSource,
    SourceSpec,
    UriSource,
    new_request_id,
    snapshot_id_for,
    source_format_from_uri,
)
from handlers.uris import to_uri

MAX_RANDOM_VALUES = 50_000_000


# -- run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    settings = Settings.load(getattr(args, "config", None), store=getattr(args, "store", None))
    configure_logging(settings.log_format, settings.log_level, secrets=settings.secret_values())
    try:
        return asyncio.run(Daemon(settings).run(handle_signals=True))
    except OSError as err:  # the metrics port is taken, the store directory is unwritable
        fail(f"cannot start: {os_error_text(err)}", ENVIRONMENT)


# -- request --------------------------------------------------------------------------------


def parse_random(text: str) -> tuple[int, int]:
    try:
        rows_text, dim_text = text.split(",")
        rows, dimension = int(rows_text), int(dim_text)
    except ValueError:
        raise UsageError(f"--random wants N,DIM (two integers), not {text!r}") from None
    if rows < 1 or dimension < 1 or rows * dimension > MAX_RANDOM_VALUES:
        raise UsageError(
            f"--random {text}: N and DIM must be >= 1 and N*DIM <= {MAX_RANDOM_VALUES}"
        )
    return rows, dimension


def source_from_uri(text: str) -> UriSource:
    """A --from argument: a URI, or a plain, relative or ~ path (made an absolute URI)."""
    uri = to_uri(text)
    return UriSource(uri=uri, format=source_format_from_uri(uri))


def request(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    source: SourceSpec
    if args.random:
        rows, dimension = parse_random(args.random)
        source = InlineSource(documents=random_documents(rows, dimension))
    else:
        source = source_from_uri(args.source_uri)
    request_id = args.request_id or new_request_id()
    key, value = build_request(
        args.collection,
        source,
        request_id=request_id,
        format=args.format,
        compression=args.compression,
        labels=labels_from(args.label),
        base=args.base,
        deletes=deleted_ids(args.deletes),
    )
    try:
        return asyncio.run(_publish_and_wait(args, settings, request_id, key, value))
    except KafkaError as err:
        reason = f"{type(err).__name__}: {err}"
        if isinstance(err, KafkaConnectionError):
            reason, _ = asyncio.run(explain_kafka_failure(settings))
        fail(
            f"Kafka at {settings.kafka_bootstrap}: {safe_message(reason, settings.secret_values())}"
            f"; {BOOTSTRAP_HINT}",
            ENVIRONMENT,
        )


async def _publish_and_wait(
    args: argparse.Namespace, settings: Settings, request_id: str, key: bytes, value: bytes
) -> int:
    sent: dict[str, Any] = {
        "request_id": request_id,
        "collection_id": args.collection,
        "snapshot_id": snapshot_id_for(args.collection, request_id),
        "topic": settings.request_topic,
    }
    if args.wait is None:
        (placed,) = await publish(settings, [(key, value)])
        partition, offset = placed.partition, placed.offset
        sent.update(partition=partition, offset=offset, bytes=len(value))
        emit(
            args,
            sent,
            f"published request {request_id} to {settings.request_topic}"
            f"[{partition}]@{offset} ({len(value)} bytes)",
        )
        return 0
    async with OutcomeWatcher.for_settings(settings) as watcher:
        (placed,) = await publish(settings, [(key, value)])
        partition, offset = placed.partition, placed.offset
        if not args.json:
            print(
                f"published request {request_id} to {settings.request_topic}"
                f"[{partition}]@{offset}; waiting up to {args.wait:g}s for its outcome"
            )
        found = await watcher.wait_for([request_id], args.wait)
    outcome = found.get(request_id)
    if outcome is None:
        fail(
            f"no result or dead letter for request {request_id} within {args.wait:g}s "
            "(is `akisnap run` consuming the request topic?)",
            ENVIRONMENT,
        )
    emit(args, outcome_json(outcome), describe_outcome(outcome))
    return BAD_INPUT if outcome.status == "dead_lettered" else 0


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    if outcome.result is not None:
        body: dict[str, Any] = json.loads(outcome.result.model_dump_json(by_alias=True))
        return body
    letter = outcome.dead_letter
    headers = dict(_headers_text(letter.headers)) if letter is not None else {}
    return {"request_id": outcome.request_id, "status": outcome.status, "headers": headers}


def describe_outcome(outcome: Outcome) -> str:
    if outcome.result is not None:
        r = outcome.result
        return (
            f"{r.status}: snapshot {r.snapshot_id} of {r.collection_id}, "
            f"{r.vector_count} vectors × {r.dimension}, {r.total_bytes} bytes, "
            f"{r.metadata_uri}"
        )
    letter = outcome.dead_letter
    headers: Mapping[str, str] = dict(_headers_text(letter.headers)) if letter else {}
    return (
        f"dead-lettered at stage {headers.get(H_STAGE, '?')}: "
        f"{headers.get(H_CLASS, '?')}: {headers.get(H_MESSAGE, '?')}"
    )


def _headers_text(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, str]]:
    return [(name, raw.decode("utf-8", "replace")) for name, raw in headers]


# -- demo -----------------------------------------------------------------------------------


def demo(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo(args))
