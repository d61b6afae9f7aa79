"""Shared fixtures: the real Kafka broker and S3 server of `make services`.

The services' addresses come from the environment (`make test` sources `.services.env`) or,
when pytest is run by hand, from `.services.env` itself (tests/support.py, `service_env`). A
missing address fails the test that needs it: these tests never skip.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from daemon.kafka import KafkaClients
from tests.daemon_support import create_topics
from tests.support import S3Service, TopicFactory, Topics, service_env


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No AKISNAP_* variable of the caller's (`make test` exports some for the services)."""
    for name in [k for k in os.environ if k.upper().startswith("AKISNAP_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return service_env("AKISNAP_KAFKA_BOOTSTRAP")


@pytest.fixture(scope="session")
def s3_service() -> S3Service:
    return S3Service.of("s3proxy")


@pytest.fixture(scope="session")
async def kafka_admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = KafkaClients(kafka_bootstrap, client_id="akisnap-tests").admin()
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


@pytest.fixture
async def make_topics(kafka_admin: AIOKafkaAdminClient) -> AsyncIterator[TopicFactory]:
    """Create unique topics (4 partitions each) for a test; deleted afterwards."""
    created: list[str] = []

    async def make() -> Topics:
        topics = await create_topics(kafka_admin, Topics.fresh())
        created.extend(topics.names)
        return topics

    yield make
    if created:
        await kafka_admin.delete_topics(created)
