"""Shared fixtures: the real Kafka broker and S3 server of `make services`.

The services' addresses come from the environment (`make test` sources `.services.env`) or,
when pytest is run by hand, from `.services.env` itself. A missing address fails the test
that needs it: these tests never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]
SERVICES_ENV = REPO / ".services.env"
TOPIC_PARTITIONS = 4


def service_env(name: str) -> str:
    """A `make services` variable, from the environment or `.services.env`; fails if absent."""
    value = os.environ.get(name)
    if not value and SERVICES_ENV.is_file():
        for line in SERVICES_ENV.read_text(encoding="utf-8").splitlines():
            key, sep, found = line.strip().partition("=")
            if sep and key.removeprefix("export ").strip() == name:
                value = found.strip().strip("'\"")
    if not value:
        pytest.fail(f"{name} is not set: run `make services` (it writes {SERVICES_ENV.name})")
    return value


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return service_env("AKISNAP_KAFKA_BOOTSTRAP")


@dataclass(frozen=True)
class S3Service:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str


@pytest.fixture(scope="session")
def s3_service() -> S3Service:
    return S3Service(
        endpoint=service_env("AKISNAP_S3_ENDPOINT"),
        access_key=service_env("AKISNAP_S3_ACCESS_KEY"),
        secret_key=service_env("AKISNAP_S3_SECRET_KEY"),
        bucket=service_env("AKISNAP_S3_BUCKET"),
        region=os.environ.get("AKISNAP_S3_REGION") or "us-east-1",
    )


@pytest.fixture(scope="session")
async def kafka_admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="akisnap-tests")
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


@dataclass(frozen=True)
class Topics:
    """One test's own request, result and dead-letter topics (and consumer group)."""

    requests: str
    results: str
    dlq: str
    group_id: str


TopicFactory = Callable[[], Awaitable[Topics]]


@pytest.fixture
async def make_topics(kafka_admin: AIOKafkaAdminClient) -> AsyncIterator[TopicFactory]:
    """Create unique topics (4 partitions each) for a test; deleted afterwards."""
    created: list[str] = []

    async def make() -> Topics:
        tag = uuid.uuid4().hex[:10]
        topics = Topics(
            requests=f"test.{tag}.requests",
            results=f"test.{tag}.results",
            dlq=f"test.{tag}.requests.dlq",
            group_id=f"test-{tag}",
        )
        names = [topics.requests, topics.results, topics.dlq]
        await kafka_admin.create_topics(
            [
                NewTopic(name, num_partitions=TOPIC_PARTITIONS, replication_factor=1)
                for name in names
            ]
        )
        created.extend(names)
        return topics

    yield make
    if created:
        await kafka_admin.delete_topics(created)
