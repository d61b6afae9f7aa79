"""Secret hygiene: no S3 key or SASL password reaches logs, results, dead letters or `--json`.

Recognisable secrets are set for real: a private s3proxy accepts only the recognisable S3 keys,
and a private broker's SASL_SSL listener only the recognisable PLAIN password (PLAIN sends it
as it is, and aiokafka logs the handshake at debug level). ``akisnap run`` works with them at
debug level — snapshots from inline documents and from an S3 export, a duplicate, dead
letters, a pause while S3 is unreachable (an environment fault, probed) — then every CLI
verb runs with ``--json``, some meant to fail (wrong S3 secret, wrong SASL password, unknown
snapshot). Everything they wrote is scanned for every 10-character piece of each secret.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.events import build_request
from daemon.kafka import KafkaClients
from daemon.outcomes import OutcomeWatcher
from daemon.send_requests import publish
from daemon.settings import Settings
from daemon.settings_error import SettingsError
from handlers.job import InlineSource, UriSource
from handlers.stores import open_store
from tests.daemon_support import (
    TcpProxy,
    create_topics,
    env_for,
    read_topic,
    settings_for,
    switched_proxy,
    until,
)
from tests.support import REPO, Topics, akisnap_process, documents_table, write_export
from tools.services.private import AkisnapRun, KafkaBroker, S3Proxy, Tls, make_tls

S3_ACCESS_KEY = "hyg1AccessKeyQ4T8V2"
S3_SECRET_KEY = "hyg1SecretKey7Hk2Lm9PwX"
SASL_USER = "akisnap-hygiene"
SASL_PASSWORD = "hyg1SaslPw-Z3x8R6nB"
SECRETS = (S3_ACCESS_KEY, S3_SECRET_KEY, SASL_PASSWORD)
WRONG_S3_SECRET = "hyg1WrongS3Secret-Jq5V"
WRONG_SASL_PASSWORD = "hyg1WrongSaslPw-Tn4D"
BUCKET = "hygiene"
WINDOW = 10


def pieces(secret: str) -> set[str]:
    """Every WINDOW-character piece of a secret: a truncated leak is still a leak."""
    return {secret[i : i + WINDOW] for i in range(len(secret) - WINDOW + 1)}


def leaks(text: str, secrets: tuple[str, ...] = SECRETS) -> list[str]:
    return sorted({piece for secret in secrets for piece in pieces(secret) if piece in text})


@dataclass(frozen=True)
class Services:
    broker: KafkaBroker
    tls: Tls
    s3: S3Proxy


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A SASL_SSL broker and an s3proxy, both accepting only the recognisable secrets."""
    root = tmp_path_factory.mktemp("hygiene")
    tls = make_tls(root / "tls")
    broker = KafkaBroker(root / "kafka", tls=tls, plain_users={SASL_USER: SASL_PASSWORD})
    s3 = S3Proxy(root / "s3", access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY)
    s3.make_bucket(BUCKET)
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(broker.start), pool.submit(s3.start)]
    try:
        for future in started:
            future.result()
        yield Services(broker, tls, s3)
    finally:
        broker.close()
        s3.close()


def hygiene_settings(
    services: Services, s3_endpoint: str, topics: Topics, tmp_path: Path
) -> Settings:
    """SASL_SSL with the PLAIN user, the private s3proxy (through ``s3_endpoint``)."""
    return settings_for(
        services.broker.sasl_ssl_bootstrap, topics, tmp_path,
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=SASL_USER, kafka_sasl_password=SASL_PASSWORD,
        kafka_ssl_cafile=services.tls.ca_cert, store=f"s3://{BUCKET}/store-{topics.group_id}",
        source_allow=[f"s3://{BUCKET}/exports"], s3_endpoint=s3_endpoint,
        s3_access_key=S3_ACCESS_KEY, s3_secret_key=S3_SECRET_KEY, s3_region="us-east-1",
        retry_attempts=40, retry_base_seconds=0.1, retry_cap_seconds=0.5,
        shutdown_grace_seconds=6,
    )  # fmt: skip


def http_pages(port: int) -> str:
    pages = ""
    for path in ("/metrics", "/readyz", "/healthz"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as page:
            pages += page.read().decode()
    return pages


def record_text(record: Any) -> str:
    headers = " ".join(f"{k}={v.decode('utf-8', 'replace')}" for k, v in record.headers or ())
    value = (record.value or b"").decode("utf-8", "replace")
    return f"{record.key!r} {headers} {value}"


def cli(env: dict[str, str], *args: str) -> tuple[list[str], int, str]:
    """(argv, exit code, stdout + stderr) of one `akisnap` verb."""
    done = akisnap_process(*args, env=env)
    return list(args), done.returncode, done.stdout + done.stderr


async def exercise_daemon(
    settings: Settings, topics: Topics, proxy: TcpProxy, tmp_path: Path
) -> tuple[AkisnapRun, dict[str, Any], str]:
    """Run the daemon (at debug level) through successes, a duplicate, dead letters and S3
    retries; (the daemon, outcomes by request id, /metrics and /readyz text)."""
    export = write_export(documents_table(300, 16), tmp_path / "staging", "real.parquet")
    store = open_store(f"s3://{BUCKET}", settings.s3_options())
    try:
        await store.put_bytes(
            "exports/real.parquet", Path(export.removeprefix("file://")).read_bytes()
        )
    finally:
        await store.close()
    inline_id, missing_id, from_s3_id, retried_id = (str(uuid.uuid4()) for _ in range(4))
    inline = build_request("hyg", InlineSource([{"id": str(uuid.uuid4()), "vector": [1.0, 2.0]}]),
                           request_id=inline_id)  # fmt: skip
    requests = [
        inline,
        inline,  # a duplicate
        build_request(
            "hyg",
            UriSource(f"s3://{BUCKET}/exports/real.parquet", "parquet"),
            request_id=from_s3_id,
        ),
        build_request(
            "hyg",
            UriSource(f"s3://{BUCKET}/exports/missing.parquet", "parquet"),
            request_id=missing_id,
        ),
        (b"hyg", b'{"schema": "akisnap.snapshot-request/v1", "request_id": "poison"'),
    ]
    daemon = AkisnapRun(REPO, env_for(settings, AKISNAP_LOG_LEVEL="debug"), tmp_path / "run.log")
    daemon.start()
    watching = OutcomeWatcher.for_settings(settings)
    try:
        await asyncio.to_thread(daemon.wait_ready, 60)
        async with watching as outcomes:
            await publish(settings, requests)
            found = await outcomes.wait_for([inline_id, from_s3_id, missing_id], 60)
            await proxy.stop()  # S3 unreachable: the daemon pauses, then the request succeeds
            again = InlineSource([{"id": str(uuid.uuid4()), "vector": [3.0, 4.0]}])
            await publish(settings, [build_request("hyg", again, request_id=retried_id)])
            fault = '"environment.fault"'
            await until(lambda: fault in daemon.log_text(), 60, "an environment fault logged")
            await proxy.start()
            found.update(await outcomes.wait_for([retried_id], 60))
        pages = await asyncio.to_thread(http_pages, daemon.port)
    finally:
        code = await asyncio.to_thread(daemon.terminate, 20)
    assert code == 0, daemon.log_text()[-3000:]
    assert [found[i].status for i in (inline_id, from_s3_id, missing_id, retried_id)] == [
        "created", "created", "dead_lettered", "created",
    ], found  # fmt: skip
    return daemon, found, pages


@pytest.mark.timeout(240)
async def test_no_secret_reaches_logs_events_dead_letters_or_json_output(
    services: Services, tmp_path: Path
) -> None:
    """Debug logs of a busy daemon, every result and dead letter, /metrics and every CLI
    verb's --json output (failures too) hold no piece of an S3 key or the SASL password."""
    topics = await create_topics(services.broker.bootstrap, Topics.fresh("hyg"))
    async with switched_proxy(services.s3.endpoint) as proxy:
        settings = hygiene_settings(services, f"http://127.0.0.1:{proxy.port}", topics, tmp_path)
        daemon, found, pages = await exercise_daemon(settings, topics, proxy, tmp_path)
    env = env_for(settings, AKISNAP_S3_ENDPOINT=services.s3.endpoint, AKISNAP_LOG_LEVEL="debug")
    kafka = KafkaClients.of(settings)
    records = [*await read_topic(kafka, topics.results), *await read_topic(kafka, topics.dlq)]
    snapshot_id = next(o.result.snapshot_id for o in found.values() if o.result is not None)
    outputs = await cli_outputs(env, snapshot_id, tmp_path)

    log = daemon.log_text()
    assert "Request to" in log and '"level": "debug"' in log, "the log is not at debug level"
    assert '"environment.fault"' in log and '"request.dead_lettered"' in log
    assert len(records) >= 5
    found_leaks = {
        "daemon log": leaks(log),
        "result and dead-letter records": leaks("\n".join(record_text(r) for r in records)),
        "/metrics, /readyz, /healthz": leaks(pages),
    }
    for args, code, text in outputs:
        wrong = (WRONG_S3_SECRET, WRONG_SASL_PASSWORD)
        found_leaks[f"akisnap {' '.join(args)} (exit {code})"] = leaks(text, SECRETS + wrong)
    assert not {where: got for where, got in found_leaks.items() if got}, found_leaks


async def cli_outputs(
    env: dict[str, str], snapshot_id: str, tmp_path: Path
) -> list[tuple[list[str], int, str]]:
    """Every verb with --json (three meant to fail), four at a time."""
    wrong_s3 = {**env, "AKISNAP_S3_SECRET_KEY": WRONG_S3_SECRET}
    wrong_sasl = {**env, "AKISNAP_KAFKA_SASL_PASSWORD": WRONG_SASL_PASSWORD}
    export = f"s3://{BUCKET}/exports/real.parquet"
    created = await asyncio.to_thread(
        cli, env, "snapshots", "create", "--collection", "hyg-cli", "--from", export, "--json"
    )
    assert created[1] == 0, created
    calls: list[tuple[dict[str, str], tuple[str, ...], bool]] = [
        (env, ("snapshots", "list", "--json"), True),
        (env, ("snapshots", "show", snapshot_id, "--json"), True),
        (env, ("snapshots", "verify", snapshot_id, "--full", "--json"), True),
        (
            env,
            ("snapshots", "restore", snapshot_id, "--out", str(tmp_path / "r.jsonl"), "--json"),
            True,
        ),
        (env, ("snapshots", "prune", "--orphans", "--grace-hours", "0", "--json"), True),
        (env, ("snapshots", "prune", "hyg-cli", "--keep-last", "0", "--json"), True),
        (env, ("dlq", "list", "--json"), True),
        (env, ("dlq", "replay", "--dry-run", "--json"), True),
        (env, ("request", "--collection", "hyg-cli", "--random", "3,4", "--json"), True),
        (env, ("snapshots", "show", str(uuid.UUID(int=0)), "--json"), False),
        (wrong_s3, ("snapshots", "list", "--json"), False),
        (wrong_sasl, ("request", "--collection", "hyg-cli", "--random", "3,4", "--json"), False),
    ]
    slots = asyncio.Semaphore(4)

    async def one(
        call_env: dict[str, str], args: tuple[str, ...], ok: bool
    ) -> tuple[list[str], int, str]:
        async with slots:
            argv, code, text = await asyncio.to_thread(cli, call_env, *args)
        assert (code == 0) == ok, f"akisnap {' '.join(argv)} exited {code}: {text[-2000:]}"
        if ok:
            json.loads(text)  # --json: the whole output is one JSON document
        return argv, code, text

    return [created, *await asyncio.gather(*(one(e, a, ok) for e, a, ok in calls))]


def test_settings_never_show_secret_values() -> None:
    """repr, str, the redacted view and validation errors of Settings hold no secret."""
    settings = Settings.load(
        None, s3_access_key=S3_ACCESS_KEY, s3_secret_key=S3_SECRET_KEY,
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=SASL_USER, kafka_sasl_password=SASL_PASSWORD,
    )  # fmt: skip
    shown = repr(settings) + str(settings) + json.dumps(settings.redacted(), default=str)
    assert not leaks(shown)
    with pytest.raises(SettingsError) as failed:  # secrets of the wrong type, among errors
        Settings.load(
            None, s3_access_key=S3_ACCESS_KEY, s3_secret_key=[S3_SECRET_KEY],
            kafka_sasl_password={"pw": SASL_PASSWORD}, retry_attempts=0,
        )  # fmt: skip
    assert "AKISNAP_S3_SECRET_KEY" in str(failed.value)
    assert not leaks(str(failed.value))
