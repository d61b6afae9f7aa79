"""The local services that `make services` starts: a real Kafka broker and a real S3 server.

The settings come from the environment (the Makefile sources .services.env before pytest).
A missing setting fails the test: these services are part of the test setup, not optional.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from daemon.kafka import KafkaClients
from tests.support import s3_options, service_env

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

MIB = 1024 * 1024
TOPICS = ("akidb.snapshot.requests", "akidb.snapshot.results", "akidb.snapshot.requests.dlq")
PARTITIONS = 4


def s3_settings() -> dict[str, Any]:
    """A raw S3 client's arguments (the services are checked without the code under test)."""
    options = s3_options()
    return {
        "endpoint_url": options.endpoint_url,
        "aws_access_key_id": options.access_key,
        "aws_secret_access_key": options.secret_key,
        "region_name": options.region,
        "config": AioConfig(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 2},
        ),
    }


async def describe(bootstrap: str, topics: list[str]) -> dict[str, list[dict[str, Any]]]:
    admin = KafkaClients(bootstrap).admin(request_timeout_ms=10_000)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {t["topic"]: t["partitions"] for t in described if t["error_code"] == 0}


def test_kafka_topics_have_four_partitions() -> None:
    """The three snapshot topics exist on the broker, each with 4 led partitions."""
    bootstrap = service_env("AKISNAP_KAFKA_BOOTSTRAP")
    found = asyncio.run(describe(bootstrap, list(TOPICS)))
    for topic in TOPICS:
        assert topic in found, f"topic {topic} is missing on {bootstrap}"
        partitions = found[topic]
        assert sorted(p["partition"] for p in partitions) == list(range(PARTITIONS))
        assert all(p["leader"] >= 0 for p in partitions), partitions


def test_kafka_produce_consume_round_trip() -> None:
    """A message produced to a throwaway topic is consumed back unchanged."""
    bootstrap = service_env("AKISNAP_KAFKA_BOOTSTRAP")
    topic = f"akisnap.test.services.{uuid.uuid4().hex}"
    payload = uuid.uuid4().bytes * 8

    async def round_trip() -> tuple[bytes | None, bytes | None]:
        admin = KafkaClients(bootstrap).admin(request_timeout_ms=10_000)
        await admin.start()
        try:
            response = await admin.create_topics([NewTopic(topic, 1, 1)], timeout_ms=10_000)
            errors = [e for e in response.to_object()["topic_errors"] if e["error_code"]]
            assert not errors, errors
            producer = KafkaClients(bootstrap).producer(acks="all")
            await producer.start()
            try:
                sent = await producer.send_and_wait(topic, payload, key=b"k")
            finally:
                await producer.stop()
            consumer = KafkaClients(bootstrap).consumer(enable_auto_commit=False)
            await consumer.start()
            try:
                partition = TopicPartition(topic, sent.partition)
                consumer.assign([partition])
                consumer.seek(partition, sent.offset)
                record = await asyncio.wait_for(consumer.getone(), timeout=30)
            finally:
                await consumer.stop()
            return record.key, record.value
        finally:
            try:
                await admin.delete_topics([topic])
            finally:
                await admin.close()

    key, value = asyncio.run(round_trip())
    assert key == b"k"
    assert value == payload


def test_s3_put_get_delete() -> None:
    """An object put into the test bucket reads back and is gone after delete."""
    bucket = service_env("AKISNAP_S3_BUCKET")
    key = f"tests/services/{uuid.uuid4().hex}/small.bin"
    body = os.urandom(4096)

    async def put_get_delete() -> tuple[bytes, list[str]]:
        async with get_session().create_client("s3", **s3_settings()) as s3:
            await s3.put_object(Bucket=bucket, Key=key, Body=body)
            response = await s3.get_object(Bucket=bucket, Key=key)
            async with response["Body"] as stream:
                read = await stream.read()
            await s3.delete_object(Bucket=bucket, Key=key)
            listing = await s3.list_objects_v2(Bucket=bucket, Prefix=key)
            return read, [o["Key"] for o in listing.get("Contents", [])]

    read, left = asyncio.run(put_get_delete())
    assert read == body
    assert left == []


def test_s3_multipart_upload() -> None:
    """A two-part multipart upload (5 MiB+ each) reads back byte for byte."""
    bucket = service_env("AKISNAP_S3_BUCKET")
    key = f"tests/services/{uuid.uuid4().hex}/multipart.bin"
    parts = [os.urandom(5 * MIB + 1), os.urandom(5 * MIB + 2)]

    async def multipart() -> bytes:
        async with get_session().create_client("s3", **s3_settings()) as s3:
            upload = await s3.create_multipart_upload(Bucket=bucket, Key=key)
            upload_id = upload["UploadId"]
            try:
                done: list[CompletedPartTypeDef] = []
                for number, data in enumerate(parts, start=1):
                    part = await s3.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                    )
                    done.append({"ETag": part["ETag"], "PartNumber": number})
                await s3.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
                )
            except BaseException:
                await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                raise
            try:
                response = await s3.get_object(Bucket=bucket, Key=key)
                async with response["Body"] as stream:
                    return bytes(await stream.read())
            finally:
                await s3.delete_object(Bucket=bucket, Key=key)

    read = asyncio.run(multipart())
    expected = b"".join(parts)
    assert len(read) == len(expected)
    assert hashlib.sha256(read).hexdigest() == hashlib.sha256(expected).hexdigest()
