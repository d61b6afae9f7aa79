"""Kafka security: the daemon over SASL_SSL (SCRAM-SHA-512, PLAIN) and mutual TLS.

A private broker (``tools/services/private.py``) gets a throwaway CA made here with
``openssl``, a SASL_SSL listener with a SCRAM-SHA-512 user (created when its storage is
formatted) and a PLAIN user, and an SSL listener that requires a client certificate. The
daemon is configured only through the settings of DESIGN.md (``AKISNAP_KAFKA_SECURITY_PROTOCOL``,
``…_SASL_MECHANISM``, ``…_SASL_USERNAME``, ``…_SASL_PASSWORD``, ``…_SSL_CAFILE``,
``…_SSL_CERTFILE``, ``…_SSL_KEYFILE``), and must say clearly why a broker refuses it without
ever printing the password.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.kafka_explain import explain_kafka_failure
from daemon.outcomes import OutcomeWatcher
from daemon.send_requests import publish
from daemon.settings import Settings
from handlers.job import snapshot_id_for
from tests.daemon_support import (
    create_topics,
    env_for,
    inline_request,
    running,
    settings_for,
    until,
)
from tests.support import REPO, Topics, akisnap_process
from tools.services.private import AkisnapRun, KafkaBroker, Tls, make_tls

SCRAM_USER, SCRAM_PASSWORD = "akisnap-scram", "scram-pw-7d1e0b9a4c"
PLAIN_USER, PLAIN_PASSWORD = "akisnap-plain", "plain-pw-3f8a6c2e51"
WRONG_PASSWORD = "wrong-pw-b62c7e19f0"


@dataclass(frozen=True)
class SecureBroker:
    broker: KafkaBroker
    tls: Tls


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A private broker with SASL_SSL (SCRAM-SHA-512 + PLAIN users) and mTLS listeners."""
    root = tmp_path_factory.mktemp("secure-kafka")
    tls = make_tls(root / "tls")
    broker = KafkaBroker(
        root / "kafka",
        tls=tls,
        scram_users={SCRAM_USER: SCRAM_PASSWORD},
        plain_users={PLAIN_USER: PLAIN_PASSWORD},
    )
    broker.start()
    try:
        yield SecureBroker(broker, tls)
    finally:
        broker.close()


def security_settings(
    secure: SecureBroker, mode: str, password: str | None = None
) -> dict[str, Any]:
    """The settings (field names) of one way in: scram, plain or mtls."""
    tls = secure.tls
    if mode == "mtls":
        return {
            "kafka_bootstrap": secure.broker.ssl_bootstrap,
            "kafka_security_protocol": "SSL",
            "kafka_ssl_cafile": tls.ca_cert,
            "kafka_ssl_certfile": tls.client_cert,
            "kafka_ssl_keyfile": tls.client_key,
        }
    user, right = (SCRAM_USER, SCRAM_PASSWORD) if mode == "scram" else (PLAIN_USER, PLAIN_PASSWORD)
    return {
        "kafka_bootstrap": secure.broker.sasl_ssl_bootstrap,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512" if mode == "scram" else "PLAIN",
        "kafka_sasl_username": user,
        "kafka_sasl_password": password or right,
        "kafka_ssl_cafile": tls.ca_cert,
    }


@pytest.fixture
async def topics(secure_broker: SecureBroker) -> AsyncIterator[Topics]:
    """Fresh topics, made over the broker's PLAINTEXT listener (set-up only)."""
    yield await create_topics(secure_broker.broker.bootstrap, Topics.fresh("sec"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["scram", "plain", "mtls"])
async def test_daemon_processes_a_request_over_a_secured_listener(
    secure_broker: SecureBroker, topics: Topics, tmp_path: Path, mode: str
) -> None:
    """Over SASL_SSL with SCRAM-SHA-512 or PLAIN, or TLS with a client certificate, the daemon
    consumes a request and publishes its result (publishing and watching secured too)."""
    values = security_settings(secure_broker, mode)
    settings: Settings = settings_for(values.pop("kafka_bootstrap"), topics, tmp_path, **values)
    assert settings.kafka_security_protocol in ("SASL_SSL", "SSL")
    rid, key, value = inline_request("secured", rows=20, dim=8)
    watching = OutcomeWatcher.for_settings(settings)
    async with running(settings), watching as outcomes:
        await publish(settings, [(key, value)])
        found = await outcomes.wait_for([rid], 60)
    assert found[rid].status == "created", found
    assert found[rid].result is not None and found[rid].result.snapshot_id == snapshot_id_for(
        "secured", rid
    )


@pytest.mark.parametrize("mode", ["scram", "plain"])
async def test_wrong_password_is_explained(secure_broker: SecureBroker, mode: str) -> None:
    """With a wrong SASL password the reason names the mechanism, the user and the settings
    to check, and never the password."""
    values = security_settings(secure_broker, mode, password=WRONG_PASSWORD)
    reason, refused = await explain_kafka_failure(Settings.load(None, **values))
    assert refused
    mechanism = values["kafka_sasl_mechanism"]
    assert f"SASL {mechanism} authentication failed for user '{values['kafka_sasl_username']}'" in (
        reason
    )
    assert "AKISNAP_KAFKA_SASL_PASSWORD" in reason
    assert WRONG_PASSWORD not in reason


async def test_untrusted_or_missing_certificates_are_explained(
    secure_broker: SecureBroker,
) -> None:
    """A broker certificate from another CA, and a TLS listener that wants a client
    certificate we do not send, each give a reason naming the setting to fix."""
    tls = secure_broker.tls
    other_ca = {**security_settings(secure_broker, "scram"), "kafka_ssl_cafile": tls.other_ca_cert}
    reason, refused = await explain_kafka_failure(Settings.load(None, **other_ca))
    assert refused and "not trusted" in reason and "AKISNAP_KAFKA_SSL_CAFILE" in reason, reason
    no_client_cert = security_settings(secure_broker, "mtls")
    del no_client_cert["kafka_ssl_certfile"], no_client_cert["kafka_ssl_keyfile"]
    reason, refused = await explain_kafka_failure(Settings.load(None, **no_client_cert))
    assert refused and "AKISNAP_KAFKA_SSL_CERTFILE" in reason, reason
    ok, refused = await explain_kafka_failure(
        Settings.load(None, **security_settings(secure_broker, "mtls"))
    )
    assert not refused and "accepts" in ok


@pytest.mark.timeout(120)
async def test_akisnap_run_with_a_wrong_password_says_why_and_hides_it(
    secure_broker: SecureBroker, topics: Topics, tmp_path: Path
) -> None:
    """`akisnap run` (settings from AKISNAP_* variables, debug logs) with a wrong PLAIN
    password stays alive but not ready, logs `kafka.refused` with the reason at error level,
    exits 0 on SIGTERM, and the password appears nowhere in its output; `akisnap request`
    fails with the same one-line reason."""
    values = security_settings(secure_broker, "plain", password=WRONG_PASSWORD)
    settings = settings_for(
        values.pop("kafka_bootstrap"), topics, tmp_path, shutdown_grace_seconds=4, **values
    )
    env = env_for(settings, AKISNAP_LOG_LEVEL="debug")
    daemon = AkisnapRun(REPO, env, tmp_path / "run.log")
    daemon.start()

    async def refused_and_never_ready() -> bool:
        assert not await asyncio.to_thread(daemon.ready)
        return '"kafka.refused"' in daemon.log_text()

    try:
        await until(refused_and_never_ready, 60, lambda: daemon.log_text()[-3000:])
    finally:
        code = await asyncio.to_thread(daemon.terminate, 20)
    log = daemon.log_text()
    assert code == 0, log[-3000:]
    refused = [line for line in log.splitlines() if '"kafka.refused"' in line]
    assert '"level": "error"' in refused[0]
    assert "SASL PLAIN authentication failed for user 'akisnap-plain'" in refused[0]
    assert "Request to" in log, "no aiokafka debug lines: the scan below proves nothing"
    assert WRONG_PASSWORD not in log

    request = await asyncio.to_thread(
        akisnap_process, "request", "--collection", "c", "--random", "2,4", "--json", env=env
    )
    assert request.returncode != 0
    assert "SASL PLAIN authentication failed for user 'akisnap-plain'" in request.stderr
    assert WRONG_PASSWORD not in request.stdout + request.stderr
