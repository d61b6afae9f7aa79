"""Readiness checks and setup for the local services started by tools/services.sh.

    python ready.py kafka BOOTSTRAP --pid PID --timeout SECONDS --partitions N TOPIC...
    python ready.py s3 ENDPOINT --pid PID --timeout SECONDS --bucket B --access-key K --secret-key S

Each waits until its server answers (giving up early if PID dies), makes sure the topics or the
bucket exist, checks them, and exits non-zero with a reason on stderr otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import botocore.session
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from botocore.config import Config
from botocore.exceptions import ClientError

T = TypeVar("T")


class GiveUpError(Exception):
    """An error that retrying will not fix."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): look at its state too.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


async def retry(what: str, pid: int, deadline: float, step: Callable[[], Awaitable[T]]) -> T:
    last: BaseException | None = None
    while True:
        if not pid_alive(pid):
            raise GiveUpError(f"{what}: server process {pid} exited")
        try:
            return await step()
        except GiveUpError:
            raise
        except Exception as exc:  # anything else means "not ready yet"
            last = exc
        if time.monotonic() >= deadline:
            raise GiveUpError(f"{what}: not ready before the timeout; last error: {last!r}")
        await asyncio.sleep(0.5)


async def kafka(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.timeout

    async def admin_client() -> AIOKafkaAdminClient:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=args.bootstrap, request_timeout_ms=5000, client_id="akisnap-services"
        )
        try:
            await admin.start()
        except BaseException:
            await admin.close()
            raise
        return admin

    admin = await retry("kafka: connect", args.pid, deadline, admin_client)
    try:

        async def ensure_topics() -> None:
            existing = set(await admin.list_topics())
            missing = [t for t in args.topics if t not in existing]
            if missing:
                response = await admin.create_topics(
                    [NewTopic(t, args.partitions, 1) for t in missing], timeout_ms=10000
                )
                for entry in response.to_object()["topic_errors"]:
                    code = entry["error_code"]
                    if code not in (0, TopicAlreadyExistsError.errno):
                        raise RuntimeError(
                            f"create {entry['topic']}: {for_code(code).__name__} "
                            f"{entry.get('error_message') or ''}"
                        )
                print(f"kafka: created topics {', '.join(missing)}", file=sys.stderr)

        await retry("kafka: create topics", args.pid, deadline, ensure_topics)

        async def check_topics() -> None:
            described = await admin.describe_topics(args.topics)
            by_name = {t["topic"]: t for t in described}
            for name in args.topics:
                topic = by_name.get(name)
                if topic is None or topic["error_code"] != 0:
                    raise RuntimeError(f"topic {name} not described yet: {topic}")
                partitions = topic["partitions"]
                if len(partitions) != args.partitions:
                    raise GiveUpError(
                        f"kafka: topic {name} has {len(partitions)} partitions, "
                        f"expected {args.partitions} (run `make services-down` to reset)"
                    )
                leaderless = [p["partition"] for p in partitions if p["leader"] < 0]
                if leaderless:
                    raise RuntimeError(f"topic {name}: no leader yet for {leaderless}")

        await retry("kafka: check topics", args.pid, deadline, check_topics)

        # Creates __consumer_offsets now, so the first consumer group join in tests is quick.
        async def warm_group_coordinator() -> None:
            await admin.find_coordinator("akisnap-services-warmup")

        await retry("kafka: group coordinator", args.pid, deadline, warm_group_coordinator)
    finally:
        await admin.close()


async def s3(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.timeout
    client: Any = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=args.endpoint,
        region_name=args.region,
        aws_access_key_id=args.access_key,
        aws_secret_access_key=args.secret_key,
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=2,
            read_timeout=10,
            retries={"max_attempts": 1},
        ),
    )

    async def list_buckets() -> list[str]:
        try:
            return [b["Name"] for b in client.list_buckets()["Buckets"]]
        except ClientError as exc:
            # An answer, but a refusal: wrong keys or settings, not a slow start.
            raise GiveUpError(f"s3: server answered with an error: {exc}") from exc

    names = await retry("s3: connect", args.pid, deadline, list_buckets)
    if args.bucket not in names:
        client.create_bucket(Bucket=args.bucket)
        print(f"s3: created bucket {args.bucket}", file=sys.stderr)
    client.head_bucket(Bucket=args.bucket)
    key = ".akisnap-services-probe"
    client.put_object(Bucket=args.bucket, Key=key, Body=b"ok")
    body = client.get_object(Bucket=args.bucket, Key=key)["Body"].read()
    client.delete_object(Bucket=args.bucket, Key=key)
    if body != b"ok":
        raise GiveUpError(f"s3: probe object read back as {body!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="service", required=True)
    k = sub.add_parser("kafka")
    k.add_argument("bootstrap")
    k.add_argument("--pid", type=int, required=True)
    k.add_argument("--timeout", type=float, default=60)
    k.add_argument("--partitions", type=int, required=True)
    k.add_argument("topics", nargs="+")
    s = sub.add_parser("s3")
    s.add_argument("endpoint")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--bucket", required=True)
    s.add_argument("--access-key", required=True)
    s.add_argument("--secret-key", required=True)
    s.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    # Connection errors while a server starts are expected; retry() reports the last one.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        asyncio.run(kafka(args) if args.service == "kafka" else s3(args))
    except GiveUpError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
