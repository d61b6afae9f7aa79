"""Observability: the DESIGN metrics, the health HTTP server, liveness, and log lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import replace

import aiohttp
import pytest
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from daemon import __version__
from daemon.health import HealthServer, Liveness
from daemon.logging import configure_logging, get_logger
from daemon.metrics import DESIGN_METRIC_NAMES, STAGES, Metrics
from handlers.errors import InvalidDocumentsError
from handlers.metadata import DeltaInfo, PartInfo, SnapshotMetadata
from handlers.stages import StageClock
from tests.daemon_support import sample

# -- metrics ----------------------------------------------------------------------------------


def test_render_lists_every_design_name() -> None:
    """A fresh Metrics exports all 19 DESIGN families, outcomes and stages pre-initialised."""
    metrics = Metrics()
    text = metrics.render().decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert len(DESIGN_METRIC_NAMES) == 22
    for name in DESIGN_METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    assert families["akisnap_build_info"].samples[0].labels == {"version": __version__}
    assert families["akisnap_build_info"].samples[0].value == 1
    made = metrics.registry.get_sample_value  # the children exist (at 0) before any request
    for outcome in ("created", "dead_lettered", "duplicate"):
        assert made("akisnap_requests_total", {"outcome": outcome}) == 0
    for stage in STAGES:
        assert made("akisnap_stage_duration_seconds_count", {"stage": stage}) == 0
        assert made("akisnap_dlq_messages_total", {"stage": stage}) == 0


def test_registries_are_independent() -> None:
    """Two Metrics never share state or touch the global registry."""
    first, second = Metrics(), Metrics(CollectorRegistry())
    first.retried("upload")
    assert sample(first, "akisnap_retries_total", stage="upload") == 1
    assert sample(second, "akisnap_retries_total", stage="upload") == 0


async def test_stage_clock_observes_success_and_failure() -> None:
    """The stage histogram counts a stage that raised as well as one that finished; bad input
    is timed under the stage its dead letter names (validate), as the clock blames it."""
    metrics = Metrics()
    clock = StageClock(metrics.stage_observed)
    async with clock("encode"):
        await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError):
        async with clock("encode"):
            raise RuntimeError("boom")
    assert clock.failed == "encode"
    with pytest.raises(InvalidDocumentsError):
        async with clock("source"):
            raise InvalidDocumentsError("NaN in a vector")
    assert clock.failed == "validate"
    assert sample(metrics, "akisnap_stage_duration_seconds_count", stage="encode") == 2
    assert sample(metrics, "akisnap_stage_duration_seconds_sum", stage="encode") >= 0.01
    assert sample(metrics, "akisnap_stage_duration_seconds_count", stage="validate") == 1
    assert sample(metrics, "akisnap_stage_duration_seconds_count", stage="source") == 0
    assert sample(metrics, "akisnap_stage_duration_seconds_count", stage="upload") == 0
    assert clock.seconds["encode"] >= 0.01


async def test_counters_and_gauges_move() -> None:
    """Each recording method moves its metric; in-flight returns to 0 after an error."""
    metrics = Metrics()
    metrics.request_finished("created", 1.5)
    metrics.request_finished("dead_lettered", 0.01)
    part = PartInfo("k", 4096, 100, "0" * 64)
    full = SnapshotMetadata("s", "c", "r", "parquet", "zstd", 8, 100, "t", (part,), {}, 13107)
    delta = DeltaInfo("s", None, 1, 0, 0, 101, 1, full_equivalent_bytes=4137)
    small = replace(full, vector_count=1, parts=(replace(part, size=10),), delta=delta)
    metrics.snapshot_created(full)
    metrics.snapshot_created(replace(small, json_equivalent_bytes=0))
    metrics.dead_lettered("validate")
    metrics.retried("upload")
    metrics.set_lag("akidb.snapshot.requests", 3, 42)

    assert sample(metrics, "akisnap_requests_total", outcome="created") == 1
    assert sample(metrics, "akisnap_requests_total", outcome="dead_lettered") == 1
    assert sample(metrics, "akisnap_request_duration_seconds_count") == 2
    assert sample(metrics, "akisnap_request_duration_seconds_bucket", le="2.5") == 2
    assert sample(metrics, "akisnap_request_duration_seconds_bucket", le="1.0") == 1
    assert sample(metrics, "akisnap_snapshot_bytes_total") == 4106
    assert sample(metrics, "akisnap_vectors_total") == 101
    assert sample(metrics, "akisnap_compression_ratio_count") == 1
    assert sample(metrics, "akisnap_snapshots_total", kind="delta") == 1
    assert sample(metrics, "akisnap_delta_bytes_saved_total") == 4137 - 10
    assert sample(metrics, "akisnap_last_success_timestamp_seconds") > 1.7e9
    assert sample(metrics, "akisnap_dlq_messages_total", stage="validate") == 1
    assert sample(metrics, "akisnap_retries_total", stage="upload") == 1
    lag = {"topic": "akidb.snapshot.requests", "partition": "3"}
    assert sample(metrics, "akisnap_consumer_lag", **lag) == 42
    metrics.clear_lag("akidb.snapshot.requests", 3)
    metrics.clear_lag("akidb.snapshot.requests", 3)  # twice is harmless
    assert metrics.registry.get_sample_value("akisnap_consumer_lag", lag) is None


# -- health server ----------------------------------------------------------------------------


class Switch:
    """A readiness answer the test can flip."""

    def __init__(self) -> None:
        self.ready = False

    async def __call__(self) -> tuple[bool, str]:
        return (True, "ok") if self.ready else (False, "consumer has not joined its group")


async def get(port: int, path: str) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, response.headers["Content-Type"], await response.text()


async def test_health_server_endpoints() -> None:
    """On an ephemeral port: /healthz 200, /readyz 503 then 200, /metrics lists build_info."""
    metrics = Metrics()
    switch = Switch()
    server = HealthServer(metrics, 0, host="127.0.0.1", ready=switch, alive=lambda: (True, "ok"))
    await server.start()
    try:
        port = server.bound_port
        assert port > 0
        assert (await get(port, "/healthz"))[::2] == (200, "ok\n")
        status, _, body = await get(port, "/readyz")
        assert (status, body) == (503, "consumer has not joined its group\n")
        switch.ready = True
        assert (await get(port, "/readyz"))[0] == 200
        status, content_type, body = await get(port, "/metrics")
        assert status == 200
        assert content_type.startswith("text/plain; version=0.0.4")
        assert f'akisnap_build_info{{version="{__version__}"}} 1.0' in body
        assert (await get(port, "/nope"))[0] == 404
    finally:
        await server.stop()
    with pytest.raises(RuntimeError):
        _ = server.bound_port


async def test_health_server_unhealthy_and_failing_checks() -> None:
    """/healthz says why it is 503; a readiness check that raises or hangs is a 503 too."""

    async def broken() -> tuple[bool, str]:
        raise ConnectionError("store unreachable")

    async def hangs() -> tuple[bool, str]:
        await asyncio.sleep(10)
        return True, "ok"

    async with HealthServer(
        Metrics(), 0, host="127.0.0.1", ready=broken, alive=lambda: (False, "stalled: 9s")
    ) as server:
        assert (await get(server.bound_port, "/healthz"))[::2] == (503, "stalled: 9s\n")
        status, _, body = await get(server.bound_port, "/readyz")
        assert status == 503
        assert "ConnectionError: store unreachable" in body

    async with HealthServer(
        Metrics(), 0, host="127.0.0.1", ready=hangs, alive=lambda: (True, "ok"),
        ready_timeout_seconds=0.05,
    ) as server:  # fmt: skip
        status, _, body = await get(server.bound_port, "/readyz")
        assert status == 503
        assert "timed out" in body


# -- liveness ---------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_liveness_stalls_only_while_work_waits() -> None:
    """Unhealthy only when work waits and no beat came within the limit."""
    clock = FakeClock()
    live = Liveness(clock)
    clock.now += 100
    assert live.check(5)[0]  # idle for long: healthy
    live.waiting(True)
    clock.now += 3
    assert live.check(5) == (True, "ok")  # waiting counts from when work arrived
    clock.now += 3
    ok, reason = live.check(5)
    assert not ok
    assert "no progress for 6.0s" in reason
    live.beat()
    assert live.check(5)[0]
    clock.now += 4
    live.waiting(True)  # still waiting: does not restart the clock
    clock.now += 2
    assert not live.check(5)[0]
    live.waiting(False)
    assert live.check(5)[0]


async def test_liveness_with_real_time() -> None:
    """With the real clock and small times, a missing beat is caught and a beat heals."""
    live = Liveness()
    live.waiting(True)
    await asyncio.sleep(0.06)
    assert not live.check(0.05)[0]
    live.beat()
    assert live.check(0.05)[0]


# -- logging ----------------------------------------------------------------------------------


def reset_logging() -> None:
    """Leave no handler or structlog configuration behind for other tests."""
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "akisnap"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    yield stream
    reset_logging()


def read_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_logs_carry_context_and_hide_secrets(log_stream: io.StringIO) -> None:
    """Bound request ids land on every line (also stdlib lines); secret-looking keys are ***."""
    stream = log_stream
    log = get_logger("akisnap.test")
    structlog.contextvars.bind_contextvars(request_id="r-1", collection_id="c", snapshot_id="s")
    log.info("stage done", stage="encode", s3_secret_key="AKIA-secret", settings={"password": "x"})
    logging.getLogger("aiokafka.consumer").warning("heartbeat failed")
    log.debug("hidden at info")
    first, second = read_lines(stream)
    for line in (first, second):
        assert (line["request_id"], line["collection_id"], line["snapshot_id"]) == ("r-1", "c", "s")
        assert str(line["timestamp"]).endswith("Z")
    assert first["event"] == "stage done"
    assert first["level"] == "info"
    assert first["logger"] == "akisnap.test"
    assert first["s3_secret_key"] == "***"
    assert first["settings"] == {"password": "***"}
    assert "AKIA-secret" not in stream.getvalue()
    assert (second["logger"], second["level"]) == ("aiokafka.consumer", "warning")


def test_console_format_and_bad_values() -> None:
    """console renders for people; unknown formats and levels are refused."""
    stream = io.StringIO()
    try:
        configure_logging("console", "debug", stream=stream)
        get_logger("akisnap.test").debug("hello", token="t0ps3cret")
        text = stream.getvalue()
        assert "hello" in text
        assert "t0ps3cret" not in text
        assert not text.lstrip().startswith("{")
    finally:
        reset_logging()
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", "info")
    with pytest.raises(ValueError, match="log level"):
        configure_logging("json", "loud")
