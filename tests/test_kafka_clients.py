"""Every Kafka client is built by daemon.kafka with the same connection and security."""

from __future__ import annotations

from typing import Any

from daemon.kafka import MIB, KafkaClients, fetch_limits, request_size_for
from daemon.settings import Settings


def _sasl_settings() -> Settings:
    return Settings.load(
        None,
        kafka_bootstrap="broker:9092",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="akisnap",
        kafka_sasl_password="s3cr3t",
        store="file:///tmp/akisnap-store",
    )


async def test_producer_consumer_and_admin_share_connection_and_security() -> None:
    clients = KafkaClients.of(_sasl_settings(), "akisnap-test")
    producer, consumer, admin = clients.producer(), clients.consumer(), clients.admin()
    try:
        made: list[Any] = [producer.client, consumer._client, admin._client]
        for client in made:
            assert client._bootstrap_servers == "broker:9092"
            assert client._client_id == "akisnap-test"
            assert client._security_protocol == "SASL_PLAINTEXT"
            assert client._sasl_plain_password == "s3cr3t"
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()


def test_fetch_and_request_sizes_fit_the_largest_allowed_message() -> None:
    limits = fetch_limits(16 * MIB)
    assert limits["max_partition_fetch_bytes"] > 16 * MIB
    assert limits["fetch_max_bytes"] >= limits["max_partition_fetch_bytes"]
    assert request_size_for(16 * MIB) > 16 * MIB
    assert fetch_limits(10)["max_partition_fetch_bytes"] == MIB
