"""The daemon, its dashboard and its alert rules agree on metric names, and metrics move."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

from tests.daemon_support import (
    inline_request,
    running,
    sample,
    send,
    settings_for,
    until,
    watcher,
)
from tests.support import REPO, TopicFactory

# DESIGN.md, 'Metrics': the contract the dashboard and the on-call rely on.
DESIGN_FAMILIES = (
    "akisnap_requests_total",
    "akisnap_request_duration_seconds",
    "akisnap_stage_duration_seconds",
    "akisnap_retries_total",
    "akisnap_dlq_messages_total",
    "akisnap_snapshot_bytes_total",
    "akisnap_vectors_total",
    "akisnap_snapshots_total",
    "akisnap_delta_bytes_saved_total",
    "akisnap_compactions_total",
    "akisnap_compression_ratio",
    "akisnap_in_flight_requests",
    "akisnap_in_flight_bytes",
    "akisnap_consumer_lag",
    "akisnap_last_success_timestamp_seconds",
    "akisnap_build_info",
    "akisnap_store_feature",
)
CHART = REPO / "helm" / "akisnap"
METRIC_NAME = re.compile(r"\bakisnap_[a-z_]+\b")
SAMPLE = re.compile(r"^(akisnap_[a-z_]+)(\{[^}]*\})? (\S+)$")


def scrape(port: int) -> dict[str, float]:
    """Every akisnap sample of /metrics, keyed by name plus labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if match := SAMPLE.match(line):
            samples[match[1] + (match[2] or "")] = float(match[3])
        elif line.startswith("# TYPE akisnap_"):
            samples.setdefault(line.split()[2] + "#family", 0.0)  # labelled, no child yet
    return samples


def names_of(samples: dict[str, float]) -> set[str]:
    return {key.split("{", 1)[0].removesuffix("#family") for key in samples}


def chart_metric_names() -> set[str]:
    sources = [CHART / "dashboards" / "akisnap.json", CHART / "rules" / "akisnap-rules.yaml"]
    found = {name for path in sources for name in METRIC_NAME.findall(path.read_text())}
    assert len(found) >= 8, f"too few metric names found in the chart: {found}"
    return found


def exported(name: str, sample_names: set[str]) -> bool:
    return name in sample_names or f"{name}_count" in sample_names


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    inner = ",".join(f'{key}="{val}"' for key, val in sorted(labels.items()))
    wanted = f"{name}{{{inner}}}" if labels else name
    for key, number in samples.items():
        if key == wanted or (labels and key.startswith(name + "{") and _has(key, labels)):
            return number
    return 0.0


def _has(key: str, labels: dict[str, str]) -> bool:
    return all(f'{k}="{v}"' in key for k, v in labels.items())


async def test_dashboard_rules_and_design_names_are_all_exported_and_move(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """Every DESIGN metric and every name the chart uses is on /metrics; a request moves them."""
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    rid, key, request = inline_request("observed", rows=30, dim=8)
    async with running(settings) as daemon, watcher(kafka_bootstrap, topics) as outcomes:
        before = await asyncio.to_thread(scrape, daemon.metrics_port)
        families = names_of(before)
        missing_design = [n for n in DESIGN_FAMILIES if not exported(n, families)]
        assert not missing_design, f"DESIGN metrics not exported: {missing_design}"
        missing_chart = sorted(n for n in chart_metric_names() if not exported(n, families))
        assert not missing_chart, f"dashboard/rules use names the daemon lacks: {missing_chart}"
        await send(kafka_bootstrap, topics.requests, [(key, request, [])])
        await outcomes.wait_for([rid], 30)
        created = "akisnap_requests_total"
        counted = value(before, created, outcome="created") + 1
        await until(  # counted last, once the result is out
            lambda: sample(daemon, created, outcome="created") == counted, 10, "the request counted"
        )
        after = await asyncio.to_thread(scrape, daemon.metrics_port)
    assert value(after, created, outcome="created") == value(before, created, outcome="created") + 1
    assert value(after, "akisnap_request_duration_seconds_count") == (
        value(before, "akisnap_request_duration_seconds_count") + 1
    )
    encode_count = "akisnap_stage_duration_seconds_count"
    assert (
        value(after, encode_count, stage="encode")
        == value(before, encode_count, stage="encode") + 1
    )
    assert value(after, "akisnap_vectors_total") == value(before, "akisnap_vectors_total") + 30
    assert value(after, "akisnap_last_success_timestamp_seconds") > 0


def test_dashboard_is_valid_json_with_unique_panel_ids() -> None:
    """The dashboard parses standalone, has a datasource variable and unique panel ids."""
    board = json.loads((CHART / "dashboards" / "akisnap.json").read_text())
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    assert any(v["type"] == "datasource" for v in board["templating"]["list"])
