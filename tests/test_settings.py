"""Settings: environment, YAML, precedence, one clear line per wrong field, no secrets shown."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from daemon.settings import Settings
from daemon.settings_error import SettingsError
from handlers.codecs.parquet import VECTOR_PAGE_BYTES

SECRET = "hunter2-very-secret-value"


# Each test starts without AKISNAP_* variables (CI exports some for the S3 server).
pytestmark = pytest.mark.usefixtures("clean_env")


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "akisnap.yaml"
    path.write_text(text)
    return path


def problems(exc: pytest.ExceptionInfo[SettingsError]) -> dict[str, str]:
    return dict(exc.value.problems)


def test_defaults_match_design() -> None:
    """With nothing set, the DESIGN defaults apply (a laptop needs no configuration)."""
    settings = Settings.load()
    assert settings.kafka_bootstrap == "localhost:9092"
    assert settings.group_id == "akisnap"
    assert (settings.request_topic, settings.result_topic, settings.dlq_topic) == (
        "akidb.snapshot.requests",
        "akidb.snapshot.results",
        "akidb.snapshot.requests.dlq",
    )
    assert settings.store == "file://./snapshots"
    assert settings.metrics_port == 9108
    assert settings.log_format == "json"
    assert settings.source_allow == []
    assert settings.page_bytes == VECTOR_PAGE_BYTES  # the writer's own default


def test_environment(clean_env: pytest.MonkeyPatch) -> None:
    """AKISNAP_<FIELD> sets each field; source_allow is comma-separated; case is normalised."""
    clean_env.setenv("AKISNAP_KAFKA_BOOTSTRAP", "broker:9093")
    clean_env.setenv("AKISNAP_METRICS_PORT", "9200")
    clean_env.setenv("AKISNAP_SOURCE_ALLOW", "s3://a/exports, file:///data ,")
    clean_env.setenv("AKISNAP_LOG_FORMAT", "Console")
    clean_env.setenv("AKISNAP_RETRY_BASE_SECONDS", "0.25")
    clean_env.setenv("AKISNAP_S3_ENDPOINT", "")
    settings = Settings.load()
    assert settings.kafka_bootstrap == "broker:9093"
    assert settings.metrics_port == 9200
    assert settings.source_allow == ["s3://a/exports", "file:///data"]
    assert settings.log_format == "console"
    assert settings.retry_base_seconds == 0.25
    assert settings.s3_endpoint is None
    assert settings.source_roots() == [
        "file://./snapshots",
        "file://./exports",
        "s3://a/exports",
        "file:///data",
    ]


def test_yaml_then_env_then_overrides(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    """YAML sets fields, the environment beats YAML, explicit overrides beat both."""
    config = write_yaml(
        tmp_path,
        "group_id: from-yaml\nstore: s3://bucket/yaml\nmetrics_port: 9300\n"
        "source_allow: [s3://x/y]\n",
    )
    settings = Settings.load(config)
    assert (settings.group_id, settings.store, settings.metrics_port) == (
        "from-yaml",
        "s3://bucket/yaml",
        9300,
    )
    assert settings.source_allow == ["s3://x/y"]

    clean_env.setenv("AKISNAP_GROUP_ID", "from-env")
    settings = Settings.load(config, store="file:///flag", metrics_port=None)
    assert settings.group_id == "from-env"
    assert settings.store == "file:///flag"
    assert settings.metrics_port == 9300  # a None override is 'flag not given'


def test_each_wrong_field_is_named(clean_env: pytest.MonkeyPatch) -> None:
    """Every wrong field gets its own AKISNAP_FIELD line, all at once."""
    clean_env.setenv("AKISNAP_METRICS_PORT", "70000")
    clean_env.setenv("AKISNAP_LOG_FORMAT", "xml")
    clean_env.setenv("AKISNAP_RETRY_ATTEMPTS", "-1")
    clean_env.setenv("AKISNAP_PART_SIZE_BYTES", "1000")
    clean_env.setenv("AKISNAP_PAGE_BYTES", "1000")
    with pytest.raises(SettingsError) as exc:
        Settings.load()
    found = problems(exc)
    assert set(found) == {
        "AKISNAP_METRICS_PORT",
        "AKISNAP_LOG_FORMAT",
        "AKISNAP_RETRY_ATTEMPTS",
        "AKISNAP_PART_SIZE_BYTES",
        "AKISNAP_PAGE_BYTES",
    }
    assert found["AKISNAP_METRICS_PORT"] == "must be <= 65535"
    assert "'json' or 'console'" in found["AKISNAP_LOG_FORMAT"]
    assert found["AKISNAP_RETRY_ATTEMPTS"] == "must be >= 1"
    lines = str(exc.value).splitlines()
    assert "AKISNAP_LOG_FORMAT: must be one of 'json' or 'console'" in lines
    assert isinstance(exc.value, ValueError)


def test_not_a_number(clean_env: pytest.MonkeyPatch) -> None:
    """A non-numeric port says it must be an integer, without quoting the value."""
    clean_env.setenv("AKISNAP_METRICS_PORT", "http")
    with pytest.raises(SettingsError) as exc:
        Settings.load()
    assert problems(exc) == {"AKISNAP_METRICS_PORT": "must be an integer"}


def test_wrong_yaml_value_names_file_and_key(tmp_path: Path) -> None:
    """A bad value from YAML names the variable, the file and the key; unknown keys fail."""
    config = write_yaml(tmp_path, "metrics_port: 0\nmetric_port: 1\n")
    with pytest.raises(SettingsError) as exc:
        Settings.load(config)
    found = problems(exc)
    assert found[f"--config {config}, key metrics_port"] == "must be >= 1"
    assert found[f"--config {config}, key metric_port"] == "unknown setting"


def test_unreadable_yaml(tmp_path: Path) -> None:
    """A config file that is not YAML, or not a mapping, is one clear error."""
    with pytest.raises(SettingsError, match="not valid YAML at line"):
        Settings.load(write_yaml(tmp_path, "a: [1,\n"))
    with pytest.raises(SettingsError, match="must be a mapping"):
        Settings.load(write_yaml(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(SettingsError, match="cannot read"):
        Settings.load(tmp_path / "missing.yaml")


def test_sasl_without_password_never_shows_secrets(clean_env: pytest.MonkeyPatch) -> None:
    """SASL without a password is named; secrets set elsewhere appear neither in the error
    nor in redacted()."""
    clean_env.setenv("AKISNAP_KAFKA_SECURITY_PROTOCOL", "sasl_plaintext")
    clean_env.setenv("AKISNAP_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    clean_env.setenv("AKISNAP_KAFKA_SASL_USERNAME", "akisnap")
    clean_env.setenv("AKISNAP_S3_ACCESS_KEY", SECRET)
    clean_env.setenv("AKISNAP_S3_SECRET_KEY", SECRET + "-2")
    clean_env.setenv("AKISNAP_RETRY_CAP_SECONDS", "0.1")
    with pytest.raises(SettingsError) as exc:
        Settings.load()
    found = problems(exc)
    assert "AKISNAP_KAFKA_SASL_PASSWORD" in found
    assert "SASL_PLAINTEXT" in found["AKISNAP_KAFKA_SASL_PASSWORD"]
    assert "AKISNAP_RETRY_CAP_SECONDS" in found
    assert SECRET not in str(exc.value)
    assert SECRET not in repr(exc.value.problems)


def test_bad_secret_value_is_not_quoted(tmp_path: Path) -> None:
    """A wrongly typed secret is named, its value is not echoed."""
    config = write_yaml(tmp_path, "kafka_sasl_password: [hunter2-very-secret-value]\n")
    with pytest.raises(SettingsError) as exc:
        Settings.load(config)
    assert f"--config {config}, key kafka_sasl_password" in problems(exc)
    assert SECRET not in str(exc.value)


def test_sasl_complete_gives_kafka_kwargs_and_redacts(clean_env: pytest.MonkeyPatch) -> None:
    """A complete SASL_PLAINTEXT setup becomes aiokafka kwargs; redacted() hides the secrets."""
    clean_env.setenv("AKISNAP_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    clean_env.setenv("AKISNAP_KAFKA_SASL_MECHANISM", "PLAIN")
    clean_env.setenv("AKISNAP_KAFKA_SASL_USERNAME", "akisnap")
    clean_env.setenv("AKISNAP_KAFKA_SASL_PASSWORD", SECRET)
    clean_env.setenv("AKISNAP_S3_ACCESS_KEY", "AKIA-" + SECRET)
    clean_env.setenv("AKISNAP_S3_SECRET_KEY", SECRET + "-2")
    settings = Settings.load()
    assert settings.kafka_security_kwargs() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "akisnap",
        "sasl_plain_password": SECRET,
    }
    shown = settings.redacted()
    assert shown["kafka_sasl_password"] == "***"
    assert shown["s3_access_key"] == "***"
    assert shown["s3_secret_key"] == "***"
    assert shown["kafka_sasl_username"] == "akisnap"
    assert SECRET not in json.dumps(shown)
    assert SECRET not in repr(settings)
    options = settings.s3_options()
    assert options.access_key == "AKIA-" + SECRET
    assert options.secret_key == SECRET + "-2"


def test_ssl_builds_context(clean_env: pytest.MonkeyPatch) -> None:
    """SSL protocol gives an ssl_context; a certificate file that does not exist is an error."""
    clean_env.setenv("AKISNAP_KAFKA_SECURITY_PROTOCOL", "SSL")
    kwargs = Settings.load().kafka_security_kwargs()
    assert kwargs["security_protocol"] == "SSL"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    clean_env.setenv("AKISNAP_KAFKA_SSL_CAFILE", "/nonexistent/ca.pem")
    with pytest.raises(SettingsError) as exc:
        Settings.load()
    assert problems(exc) == {"AKISNAP_KAFKA_SSL_CAFILE": "must name an existing file"}


def test_plaintext_kwargs_and_s3_options(clean_env: pytest.MonkeyPatch) -> None:
    """PLAINTEXT needs no other kwargs; unset S3 keys stay None (the AWS chain)."""
    clean_env.setenv("AKISNAP_S3_SSE", "aws:kms")
    clean_env.setenv("AKISNAP_S3_SSE_KMS_KEY_ID", "alias/akisnap")
    clean_env.setenv("AKISNAP_TMP_DIR", "/var/tmp/akisnap")
    settings = Settings.load()
    assert settings.kafka_security_kwargs() == {"security_protocol": "PLAINTEXT"}
    options = settings.s3_options()
    assert (options.access_key, options.secret_key) == (None, None)
    assert (options.sse, options.sse_kms_key_id) == ("aws:kms", "alias/akisnap")
    assert options.spool_dir == Path("/var/tmp/akisnap")
