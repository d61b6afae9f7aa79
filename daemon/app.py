"""The daemon: settings → store → SnapshotCreator → Kafka consumer and producer → health server.

:meth:`Daemon.run` is what ``akisnap run`` calls and what the tests drive (with
``handle_signals=False`` and :meth:`Daemon.stop`). The health server starts first, so
``/healthz`` and ``/metrics`` answer while the broker does not; ``/readyz`` turns 200 once the
consumer joined its group and the store answers. If Kafka cannot be reached, the daemon backs
off and tries again until it is told to stop.

SIGTERM / SIGINT set the stop event: stop fetching, let each partition finish the request in
hand within ``shutdown_grace_seconds`` minus a reserve (then cancel it: an encoding stops at its
next batch and deletes its spool parts), commit within half the reserve, close producer and
consumer side by side within the other half, return 0: all within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Awaitable
from typing import Any

from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
)

from daemon.compaction import CompactingCreator
from daemon.consumer import ConsumerOptions, RequestConsumer
from daemon.dead_letters.letter import safe_message
from daemon.environment import EnvironmentGate
from daemon.fate import Fate
from daemon.health import HealthServer, Liveness
from daemon.kafka import DURABLE, KafkaClients, fetch_limits, request_size_for
from daemon.kafka_explain import explain_kafka_failure, probe_bootstrap
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.partition import CANCEL_WAIT_SECONDS
from daemon.publisher import Publisher
from daemon.retry import Backoff, sleep_unless
from daemon.settings import Settings
from handlers.budget import ByteBudget
from handlers.create import SnapshotCreator
from handlers.executor import start_process_worker
from handlers.stores import ObjectStore, open_store

log = get_logger("akisnap.daemon")

# Liveness fails when work waits and the consume loop has not moved for this long.
STALL_SECONDS = 120.0
# How long a store ping answer is reused by /readyz.
PING_CACHE_SECONDS = 5.0
# Longest wait between two attempts to reach the broker.
CONNECT_BACKOFF_CAP_SECONDS = 30.0
# /healthz fails when a request in hand has worked this much longer than its deadline: the
# deadline should have dead-lettered it, so its worker is wedged.
STUCK_MARGIN_SECONDS = 60.0
# How long one probe of the store or the broker may take.
PROBE_TIMEOUT_SECONDS = 5.0


def shutdown_reserve(grace: float) -> float:
    """The end of the grace period kept for unwinding cancelled work (at most
    CANCEL_WAIT_SECONDS), the final commit and closing the clients (half of the rest each,
    all bounded), so that all of the shutdown fits in the grace period."""
    return min(5.0 + CANCEL_WAIT_SECONDS, grace / 3)


def _closing_seconds(grace: float) -> float:
    """The final commit's share of the reserve, and the clients' closing's."""
    return max(0.25, (shutdown_reserve(grace) - CANCEL_WAIT_SECONDS) / 2)


# The write path a store takes, by feature and whether the server has it.
FEATURE_PATHS = {
    "conditional_writes": {True: "put-if-none-match", False: "head-then-put"},
    "checksums": {True: "server-checked-sha256", False: "read-back"},
}


def drain_seconds(grace: float) -> float:
    """The part of the grace period workers get; the rest is kept to commit and close."""
    return max(0.0, grace - shutdown_reserve(grace))


class Daemon:
    """One akisnap daemon; :meth:`run` until :meth:`stop` (or a signal)."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        metrics_port: int | None = None,
        health_host: str = "0.0.0.0",
        client_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.liveness = Liveness()
        self._metrics_port = settings.metrics_port if metrics_port is None else metrics_port
        self._health_host = health_host
        self._client_id = client_id or f"akisnap-{socket.gethostname()}"
        self._stop = asyncio.Event()
        self._joined = asyncio.Event()
        self._health: HealthServer | None = None
        self._store: ObjectStore | None = None
        self._consumer: RequestConsumer | None = None
        self._ping_cache: tuple[float, bool, str] | None = None
        self._secrets = settings.secret_values()
        self.gate = EnvironmentGate(
            self.metrics,
            {"store": self._probe_store, "broker": self._probe_broker},
            secrets=self._secrets,
        )

    # -- control ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to finish (what SIGTERM does)."""
        self._stop.set()

    @property
    def metrics_port(self) -> int:
        """The port /metrics, /healthz and /readyz are served on (once started)."""
        if self._health is None:
            raise RuntimeError("the daemon's health server is not running")
        return self._health.bound_port

    async def wait_joined(self, within: float) -> None:
        """Wait until the consumer first got its partitions (for tests and the demo)."""
        await asyncio.wait_for(self._joined.wait(), within)

    # -- run --------------------------------------------------------------------------------

    async def run(self, handle_signals: bool = True) -> int:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        log.info("daemon.starting", settings=self.settings.redacted())
        self._health = HealthServer(
            self.metrics,
            self._metrics_port,
            host=self._health_host,
            ready=self._ready,
            alive=self._alive,
        )
        try:
            await self._health.start()
            log.info("daemon.health_serving", port=self._health.bound_port)
            await start_process_worker()
            self._store = open_store(self.settings.store, self.settings.s3_options())
            self._store.watch_features(self._store_feature)
            creator = CompactingCreator(
                SnapshotCreator(
                    self._store,
                    source_roots=self.settings.source_roots(),
                    s3=self.settings.s3_options(),
                    part_size_bytes=self.settings.part_size_bytes,
                    page_bytes=self.settings.page_bytes,
                    budget=ByteBudget(
                        self.settings.max_in_flight_bytes, self.metrics.in_flight_bytes.set
                    ),
                ),
                self.metrics,
                self.settings.compact_after_deltas,
            )
            await self._serve(creator, self._store)
        finally:
            await self.gate.close()
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self._store is not None:
                with contextlib.suppress(Exception):
                    await self._store.close()
            await self._health.stop()
        log.info("daemon.stopped")
        return 0

    def _store_feature(self, feature: str, supported: bool) -> None:
        """Which write path runs, said once per feature (see handlers.stores.conditional)."""
        self.metrics.store_feature.labels(feature=feature).set(1 if supported else 0)
        path = FEATURE_PATHS[feature][supported]
        log_at = log.info if supported else log.warning
        log_at("store.write_path", feature=feature, supported=supported, path=path)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info(
            "daemon.signal", signal=sig.name, grace_seconds=self.settings.shutdown_grace_seconds
        )
        self._stop.set()

    async def _serve(self, creator: CompactingCreator, store: ObjectStore) -> None:
        s = self.settings
        backoff = Backoff.from_settings(s)
        connect = Backoff(
            attempts=1,
            base_seconds=max(s.retry_base_seconds, 0.5),
            cap_seconds=CONNECT_BACKOFF_CAP_SECONDS,
        )
        attempt = 0
        while not self._stop.is_set():
            producer = self._producer()
            consumer = self._kafka_consumer()
            requests = self._wire(consumer, producer, creator, store, backoff)
            consumer.subscribe([s.request_topic], listener=requests.listener)
            try:
                if not await self._start(producer, consumer):
                    await self._close(consumer, producer)
                    break  # told to stop while connecting
            except KafkaError as err:
                attempt += 1
                delay = max(0.5, connect.delay(min(attempt, 8)))
                await self._close(consumer, producer)
                reason, refused = str(err), False
                if _no_bootstrap(err):
                    reason, refused = await self._explain(s)
                (log.error if refused else log.warning)(
                    "kafka.refused" if refused else "kafka.unreachable",
                    bootstrap=s.kafka_bootstrap,
                    security_protocol=s.kafka_security_protocol,
                    attempt=attempt,
                    error_class=type(err).__name__,
                    error=safe_message(str(err), self._secrets),
                    reason=safe_message(reason, self._secrets),
                    retry_in_seconds=round(delay, 2),
                )
                await sleep_unless(self._stop, delay)
                continue
            attempt = 0
            log.info(
                "kafka.connected",
                bootstrap=s.kafka_bootstrap,
                group_id=s.group_id,
                topic=s.request_topic,
            )
            self._consumer = requests
            try:
                await requests.run(self._stop)
            except KafkaError as err:
                log.warning(
                    "kafka.consumer_failed",
                    error_class=type(err).__name__,
                    error=safe_message(str(err), self._secrets),
                )
                await sleep_unless(self._stop, 1.0)
            finally:
                self._consumer = None
                self.liveness.waiting(False)
                await self._close(consumer, producer)

    async def _explain(self, settings: Settings) -> tuple[str, bool]:
        """explain_kafka_failure, given up as soon as we are told to stop."""
        probe = asyncio.create_task(explain_kafka_failure(settings, timeout_seconds=5.0))
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait({probe, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not probe.done():
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            return "stopping", False
        return probe.result()

    def _wire(
        self,
        consumer: Any,
        producer: Any,
        creator: CompactingCreator,
        store: ObjectStore,
        backoff: Backoff,
    ) -> RequestConsumer:
        """The consume loop around the fate of each request, for one pair of clients."""
        s = self.settings
        fate = Fate(
            creator=creator,
            publisher=Publisher(
                producer, result_topic=s.result_topic, dlq_topic=s.dlq_topic,
                store_root=store.root_uri,
            ),
            backoff=backoff,
            metrics=self.metrics,
            max_message_bytes=s.max_message_bytes,
            secrets=self._secrets,
            gate=self.gate,
            deadline_seconds=s.request_deadline_seconds,
            publish_attempts=s.publish_attempts,
        )  # fmt: skip
        options = ConsumerOptions(
            max_in_flight_requests=s.max_in_flight_requests,
            max_in_flight_bytes=s.max_in_flight_bytes,
            drain_seconds=drain_seconds(s.shutdown_grace_seconds),
            final_commit_seconds=_closing_seconds(s.shutdown_grace_seconds),
            fetch_error_unhealthy_seconds=s.fetch_error_unhealthy_seconds,
        )
        return RequestConsumer(
            consumer, fate, self.metrics, options, liveness=self.liveness,
            on_joined=self._joined.set, gate=self.gate,
        )  # fmt: skip

    async def _start(self, producer: Any, consumer: Any) -> bool:
        """Start both clients; False if told to stop first (a black-holed broker address
        can take a request timeout to fail, longer than the grace period)."""

        async def both() -> None:
            await producer.start()
            await consumer.start()

        starting = asyncio.create_task(both())
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, KafkaError):
                await starting
            return False
        starting.result()
        return True

    async def _close(self, consumer: Any, producer: Any) -> None:
        """Stop the consumer (leaves the group) and the producer side by side, within half the
        shutdown reserve; never raises."""
        within = _closing_seconds(self.settings.shutdown_grace_seconds)

        async def close(name: str, client: Any) -> None:
            try:
                await asyncio.wait_for(client.stop(), within)
            except Exception as err:  # closing must not stop the shutdown
                log.warning("kafka.close_failed", client=name, error_class=type(err).__name__)

        await asyncio.gather(close("consumer", consumer), close("producer", producer))

    # -- Kafka clients ----------------------------------------------------------------------

    def _producer(self) -> Any:
        s = self.settings
        return KafkaClients.of(s, self._client_id).producer(
            **DURABLE,
            # A dead letter is its request plus headers: compressed, it fits where that did.
            compression_type="gzip",
            max_request_size=request_size_for(s.max_message_bytes),
        )

    def _kafka_consumer(self) -> Any:
        s = self.settings
        drain = drain_seconds(s.shutdown_grace_seconds)
        return KafkaClients.of(s, self._client_id).consumer(
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.max_in_flight_requests,
            **fetch_limits(s.max_message_bytes),
            # A revoked partition may take `drain` seconds to finish its request in hand.
            rebalance_timeout_ms=int((drain + 15.0) * 1000),
        )

    # -- health -----------------------------------------------------------------------------

    def _alive(self) -> tuple[bool, str]:
        ok, reason = self.liveness.check(STALL_SECONDS)
        requests = self._consumer
        if not ok or requests is None:
            return ok, reason
        limit = self.settings.request_deadline_seconds + STUCK_MARGIN_SECONDS
        oldest = requests.oldest_busy_seconds()
        if oldest > limit:
            return False, (
                f"wedged: a request has been in hand for {oldest:.0f}s of working time "
                f"(deadline {self.settings.request_deadline_seconds:g}s + margin)"
            )
        trouble = requests.fetch_trouble()
        if trouble is not None:
            return False, trouble
        return ok, reason

    async def _ready(self) -> tuple[bool, str]:
        if not self.gate.is_open:
            return False, self.gate.reason
        requests = self._consumer
        if requests is None:
            return False, "not connected to Kafka yet"
        if not requests.joined:
            return False, "the consumer has not joined its group yet"
        return await self._store_ok()

    async def _store_ok(self) -> tuple[bool, str]:
        now = time.monotonic()
        if self._ping_cache is not None and now - self._ping_cache[0] < PING_CACHE_SECONDS:
            return self._ping_cache[1], self._ping_cache[2]
        store = self._store
        if store is None:
            return False, "no store"
        try:
            await _bounded(store.ping(), 4.0)
            answer = (True, "ok")
        except Exception as err:
            reason = safe_message(f"store unreachable: {type(err).__name__}: {err}", self._secrets)
            answer = (False, reason)
        self._ping_cache = (now, *answer)
        return answer

    # -- environment probes -------------------------------------------------------------------

    async def _probe_store(self) -> None:
        """HeadBucket: the endpoint answers, the credentials work, the bucket is there."""
        if self._store is None:
            return
        self._ping_cache = None
        await asyncio.wait_for(self._store.ping(), PROBE_TIMEOUT_SECONDS)

    async def _probe_broker(self) -> None:
        await probe_bootstrap(self.settings.kafka_bootstrap, PROBE_TIMEOUT_SECONDS)


def _no_bootstrap(err: KafkaError) -> bool:
    return isinstance(err, KafkaConnectionError) and "Unable to bootstrap" in str(err)


async def _bounded(awaitable: Awaitable[None], seconds: float) -> None:
    await asyncio.wait_for(awaitable, seconds)
