"""The settings table of docs/DESIGN.md, made from the settings model (every field, its
variable, its default) and the one-line descriptions below; tests/test_settings_doc.py checks
that DESIGN.md holds exactly this table and that every ``AKISNAP_*`` the code names is in it.

    python -m daemon.settings_doc    # print the table
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from daemon.settings import Settings, env_name

DESCRIPTIONS = {
    "kafka_bootstrap": "Kafka bootstrap servers, comma-separated host:port",
    "kafka_security_protocol": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    "kafka_sasl_mechanism": "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* protocols)",
    "kafka_sasl_username": "SASL user (SASL_* protocols)",
    "kafka_sasl_password": "SASL password (secret: never logged)",
    "kafka_ssl_cafile": "CA bundle that signs the broker's certificate (SSL, SASL_SSL)",
    "kafka_ssl_certfile": "client certificate, for brokers that want one",
    "kafka_ssl_keyfile": "the client certificate's key (needs the certificate)",
    "group_id": "consumer group of the daemon (replicas share it)",
    "request_topic": "topic the requests come from",
    "result_topic": "topic the results go to",
    "dlq_topic": "dead-letter topic",
    "store": "object-store root: a path, file:///dir or s3://bucket/prefix",
    "exports_root": "where requests' exports may be read from (besides the store)",
    "source_allow": "more roots requests may read exports from (comma-separated URIs)",
    "s3_endpoint": "S3 endpoint URL (unset: AWS)",
    "s3_region": "S3 region (unset: the AWS chain's)",
    "s3_access_key": "S3 access key (secret; unset with the secret key: the AWS chain)",
    "s3_secret_key": "S3 secret key (secret: never logged)",
    "s3_addressing_style": "path, virtual or auto",
    "s3_sse": "server-side encryption: AES256 or aws:kms",
    "s3_sse_kms_key_id": "KMS key for aws:kms",
    "metrics_port": "port of /metrics, /healthz and /readyz",
    "log_format": "json, or console for people",
    "log_level": "debug, info, warning, error or critical",
    "retry_attempts": "attempts at a request that fails for now before it is dead-lettered",
    "retry_base_seconds": "first retry delay (doubles each attempt, with jitter)",
    "retry_cap_seconds": "longest retry delay",
    "shutdown_grace_seconds": "time in-flight work gets to finish after SIGTERM",
    "request_deadline_seconds": "working time (environment pauses left out) before a request "
    "is dead-lettered as retryable; /healthz fails past it plus a margin",
    "publish_attempts": "attempts to publish one result or dead letter (an unreachable broker "
    "is waited out instead)",
    "fetch_error_unhealthy_seconds": "how long fetching may keep failing before /healthz fails",
    "max_in_flight_requests": "requests worked on at once",
    "max_in_flight_bytes": "request bytes held at once",
    "part_size_bytes": "uncompressed bytes per snapshot part (at least 1 MiB)",
    "page_bytes": "vector bytes per Parquet page of native parts (16 KiB to 16 MiB): smaller "
    "pages make `restore --ids` read less and store more (64 KiB: ~10% more)",
    "max_message_bytes": "largest request message accepted",
    "compact_after_deltas": "compact a chain into one full snapshot at this many deltas (0: never)",
    "tmp_dir": "spool directory for exports fetched from S3 and parts of S3 snapshots",
}
HEADER = "| variable | YAML key | default | what |\n|---|---|---|---|"


def table() -> str:
    rows = [HEADER]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default in (None, []) else f"`{default}`"
        rows.append(f"| `{env_name(name)}` | `{name}` | {shown} | {DESCRIPTIONS[name]} |")
    return "\n".join(rows)


def example_yaml() -> str:
    """docs/akisnap.example.yaml: every setting at its default (unset ones commented out)."""
    lines = [
        "# akisnap settings (`akisnap run --config FILE`, any verb takes --config).",
        "# Every key at its default; an AKISNAP_<KEY> variable overrides the file, a flag",
        "# (--store) overrides both. Generated: python -m daemon.settings_doc --yaml",
    ]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        lines.append(f"\n# {DESCRIPTIONS[name]}")
        if default in (None, []):
            lines.append(f"# {name}:")
        else:
            value = str(default) if isinstance(default, Path) else default
            lines.append(yaml.safe_dump({name: value}, default_flow_style=True).strip()[1:-1])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(
        example_yaml() if "--yaml" in sys.argv else table(),
        end="" if "--yaml" in sys.argv else "\n",
    )
