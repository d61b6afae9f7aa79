"""The daemon's settings: one validated object, from ``AKISNAP_*`` variables and/or YAML.

Every field has a default that works on a laptop, and its environment variable is
``AKISNAP_`` + the field name in upper case. :meth:`Settings.load` reads the YAML file first,
lets the environment override it, then explicit overrides (the CLI's flags) override both. A
wrong value stops the start with :class:`SettingsError`, one ``AKISNAP_<FIELD>: reason`` line
per wrong field, never quoting the value (so never a secret).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from daemon import field_errors
from daemon.settings_error import SettingsError
from handlers.secrets import REDACTED
from handlers.stores import S3Options

ENV_PREFIX = "AKISNAP_"
MIB = 1024 * 1024
# What a message about an unreachable broker tells the user to change.
BOOTSTRAP_HINT = "set AKISNAP_KAFKA_BOOTSTRAP (or kafka_bootstrap in the --config file)"
# Settings the CLI takes as flags (overrides of Settings.load): errors name the flag.
CLI_FLAGS = {"store": "--store"}

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


class Settings(BaseSettings):
    """Everything the daemon and the CLI can be told; see DESIGN.md, 'CLI'."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    # -- Kafka ---------------------------------------------------------------------------
    kafka_bootstrap: str = Field("localhost:9092", min_length=1)
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: FilePath | None = None
    kafka_ssl_certfile: FilePath | None = None
    kafka_ssl_keyfile: FilePath | None = None
    group_id: str = Field("akisnap", min_length=1)
    request_topic: str = Field("akidb.snapshot.requests", min_length=1)
    result_topic: str = Field("akidb.snapshot.results", min_length=1)
    dlq_topic: str = Field("akidb.snapshot.requests.dlq", min_length=1)

    # -- stores ----------------------------------------------------------------------------
    store: str = Field("file://./snapshots", min_length=1)
    exports_root: str = Field("file://./exports", min_length=1)
    source_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"
    s3_sse: Literal["AES256", "aws:kms"] | None = None
    s3_sse_kms_key_id: str | None = None

    # -- observability ---------------------------------------------------------------------
    metrics_port: int = Field(9108, ge=1, le=65535)
    log_format: Literal["json", "console"] = "json"
    log_level: LogLevel = "info"

    # -- processing --------------------------------------------------------------------------
    retry_attempts: int = Field(5, ge=1)
    retry_base_seconds: float = Field(0.5, gt=0)
    retry_cap_seconds: float = Field(30.0, gt=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    # Working time (environment pauses left out) after which a request is dead-lettered as
    # retryable; /healthz fails when a request in hand is older than this plus a margin.
    request_deadline_seconds: float = Field(900.0, gt=0)
    # Attempts to publish one result or dead letter (broker unreachable aside: that waits).
    publish_attempts: int = Field(10, ge=1)
    # How long fetching may keep failing (e.g. a codec it cannot read) before /healthz fails.
    fetch_error_unhealthy_seconds: float = Field(300.0, gt=0)
    # Enough for a few records queued per partition: a partition worker takes the next record
    # while the fetch loop refills (with one each, 8 partitions idled between fetches).
    # Memory is bounded by max_in_flight_bytes, not by this count.
    max_in_flight_requests: int = Field(32, ge=1)
    max_in_flight_bytes: int = Field(256 * MIB, ge=1)
    part_size_bytes: int = Field(64 * MIB, ge=MIB)
    # Smaller pages make `restore --ids` read less and compress worse (zstd then sees all four
    # byte-stream-split streams of a page in one block): 64 KiB reads ~1/10 of what 1 MiB reads
    # for scattered ids and stores embeddings ~10% larger (bench/README.md).
    page_bytes: int = Field(MIB, ge=16 * 1024, le=16 * MIB)  # handlers' VECTOR_PAGE_BYTES
    max_message_bytes: int = Field(16 * MIB, ge=1024)
    # After a delta makes its chain this many deltas long, the daemon compacts it into one
    # full snapshot (restores of long chains read every member); 0: never.
    compact_after_deltas: int = Field(24, ge=0)
    tmp_dir: Path | None = None

    # -- normalising -------------------------------------------------------------------------

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", "log_level", "s3_addressing_style", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "s3_endpoint",
        "s3_region",
        "s3_access_key",
        "s3_secret_key",
        "s3_sse",
        "s3_sse_kms_key_id",
        "tmp_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``AKISNAP_S3_ENDPOINT=`` (as a chart renders an unset value) means 'not set'."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("source_allow", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        """Comma-separated in the environment (a JSON array is accepted too)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError:
                    raise ValueError("must be comma-separated URIs or a JSON array") from None
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[tuple[str, str]] = []
        if self.kafka_security_protocol.startswith("SASL_"):
            for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password"):
                if getattr(self, name) is None:
                    problems.append(
                        (name, f"required when security protocol is {self.kafka_security_protocol}")
                    )
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            problems.append(("kafka_ssl_keyfile", "needs AKISNAP_KAFKA_SSL_CERTFILE as well"))
        if (self.s3_access_key is None) != (self.s3_secret_key is None):
            missing = "s3_secret_key" if self.s3_secret_key is None else "s3_access_key"
            problems.append((missing, "set both S3 keys or neither (the AWS credential chain)"))
        if self.s3_sse_kms_key_id is not None and self.s3_sse != "aws:kms":
            problems.append(("s3_sse_kms_key_id", "only used with AKISNAP_S3_SSE=aws:kms"))
        if self.retry_cap_seconds < self.retry_base_seconds:
            problems.append(("retry_cap_seconds", "must be >= AKISNAP_RETRY_BASE_SECONDS"))
        if self.max_in_flight_bytes < self.max_message_bytes:
            problems.append(("max_in_flight_bytes", "must be >= AKISNAP_MAX_MESSAGE_BYTES"))
        if problems:
            # One line per field, parsed back into separate problems by _problems().
            raise ValueError("\n".join(f"{env_name(name)}: {why}" for name, why in problems))
        return self

    # -- constructing ------------------------------------------------------------------------

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """YAML file (keys = field names), overridden by ``AKISNAP_*`` variables, overridden
        by ``overrides`` (``None`` values are ignored: a CLI flag that was not given)."""
        from_file = _read_yaml(config_file) if config_file is not None else {}
        in_env = {key.upper() for key in os.environ if key.upper().startswith(ENV_PREFIX)}
        values = {k: v for k, v in from_file.items() if env_name(k) not in in_env}
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError(_problems(exc, from_file, config_file, overrides)) from None

    # -- views -------------------------------------------------------------------------------

    def s3_options(self) -> S3Options:
        return S3Options(
            endpoint_url=self.s3_endpoint,
            region=self.s3_region,
            access_key=_reveal(self.s3_access_key),
            secret_key=_reveal(self.s3_secret_key),
            addressing_style=self.s3_addressing_style,
            sse=self.s3_sse,
            sse_kms_key_id=self.s3_sse_kms_key_id,
            spool_dir=self.tmp_dir,
        )

    def source_roots(self) -> list[str]:
        """Where a request's source URI may point: the store, the exports root, the allow-list."""
        return [self.store, self.exports_root, *self.source_allow]

    def kafka_security_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaConsumer / AIOKafkaProducer / the admin client."""
        kwargs: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL_"):
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = _reveal(self.kafka_sasl_password)
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            # Only Kafka verbs get here: the store verbs never import aiokafka.
            from aiokafka.helpers import create_ssl_context  # noqa: PLC0415

            kwargs["ssl_context"] = create_ssl_context(
                cafile=self.kafka_ssl_cafile,
                certfile=self.kafka_ssl_certfile,
                keyfile=self.kafka_ssl_keyfile,
            )
        return kwargs

    def secret_values(self) -> list[str]:
        """The values that must never be shown: S3 keys and the SASL password."""
        secrets = (self.s3_access_key, self.s3_secret_key, self.kafka_sasl_password)
        return [value for secret in secrets if (value := _reveal(secret))]

    def redacted(self) -> dict[str, Any]:
        """All settings as JSON-able values, secrets as ``***`` (to log at start)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out[name] = REDACTED
            elif isinstance(value, Path):
                out[name] = str(value)
            elif isinstance(value, list):
                out[name] = list(value)
            else:
                out[name] = value
        return out


def _reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


def _read_yaml(path: Path) -> dict[str, Any]:
    where = f"--config {path}"
    try:
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError([(where, f"cannot read: {exc.strerror or exc}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SettingsError([(where, f"not valid YAML{at}")]) from None
    if body is None:
        return {}
    if not isinstance(body, dict) or not all(isinstance(key, str) for key in body):
        raise SettingsError([(where, "must be a mapping of setting names to values")])
    return {key.lower(): value for key, value in body.items()}


def _problems(
    exc: ValidationError,
    from_file: dict[str, Any],
    config_file: Path | None,
    overrides: dict[str, Any],
) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for error in exc.errors(include_input=False, include_url=False):
        if not error["loc"]:  # cross-field checks: already "AKISNAP_<FIELD>: reason" lines
            for line in field_errors.strip_value_error(error["msg"]).splitlines():
                variable, _, reason = line.partition(": ")
                problems.append((variable, reason))
            continue
        where = _where(str(error["loc"][0]), from_file, config_file, overrides)
        problems.append((where, field_errors.reason(error, unknown="unknown setting")))
    return problems


def _where(
    name: str, from_file: dict[str, Any], config_file: Path | None, overrides: dict[str, Any]
) -> str:
    """What the user set: a CLI flag, an ``AKISNAP_*`` variable, or a key of the YAML file."""
    if name in CLI_FLAGS and overrides.get(name) is not None:
        return CLI_FLAGS[name]
    if name in from_file and env_name(name) not in os.environ:
        return f"--config {config_file}, key {name}"
    return env_name(name)
