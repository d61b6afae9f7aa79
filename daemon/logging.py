"""Logging: structlog, one JSON object per line (``console`` for people), on stderr.

Context bound with ``structlog.contextvars.bind_contextvars(request_id=…, collection_id=…,
snapshot_id=…)`` lands on every line of that task, including lines of the libraries that log
through the standard library (aiokafka, botocore), which are rendered the same way. Values of
keys that look secret are replaced by ``***`` before rendering, and every rendered line is
scrubbed of the secret *values* themselves (S3 keys, SASL password: given to
:func:`configure_logging` or found in the ``AKISNAP_*`` environment), as they are and as JSON or
``repr`` would escape them: a library that logs a request at debug level (aiokafka logs the SASL
PLAIN handshake bytes) cannot leak one.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from handlers.secrets import REDACTED, is_secret_key, scrub, secret_forms

LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Chatty at DEBUG; kept at INFO or above whatever the level.
QUIET_LIBRARIES = ("botocore", "aiobotocore", "urllib3", "asyncio")
# Secret settings scrubbed from every line even when configure_logging is not told them.
SECRET_ENV_VARS = ("AKISNAP_S3_ACCESS_KEY", "AKISNAP_S3_SECRET_KEY", "AKISNAP_KAFKA_SASL_PASSWORD")


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            key: (REDACTED if is_secret_key(key) and item is not None else _redact(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: ``***`` for the value of any key containing secret, password,
    access_key, secret_key or token, at any depth of nested mappings."""
    for key, value in event_dict.items():
        if is_secret_key(key) and value is not None:
            event_dict[key] = REDACTED
        elif isinstance(value, Mapping | list | tuple):
            event_dict[key] = _redact(value)
    return event_dict


class _ScrubbingFormatter(structlog.stdlib.ProcessorFormatter):
    """Renders like ProcessorFormatter, then masks every secret value left in the line."""

    def __init__(self, *args: Any, secret_forms: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._forms = secret_forms

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record), self._forms)


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (pytest and the CLI may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(
    format: str = "json",
    level: str = "info",
    *,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Route structlog and the standard library through one renderer on stderr (or
    ``stream``), masking ``secrets`` and the secret ``AKISNAP_*`` variables' values. Safe to
    call again: the previous configuration is replaced."""
    if format not in LOG_FORMATS:
        raise ValueError(f"log format {format!r} is not one of {LOG_FORMATS}")
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level {level!r} is not one of {LOG_LEVELS}")
    numeric_level = logging.getLevelNamesMapping()[level.upper()]

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: list[Processor]
    if format == "json":
        renderer = [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    else:
        out = stream or sys.stderr
        renderer = [structlog.dev.ConsoleRenderer(colors=out.isatty())]

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
    )
    from_env = [os.environ.get(name, "") for name in SECRET_ENV_VARS]
    handler.setFormatter(
        _ScrubbingFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
            secret_forms=secret_forms([*secrets, *from_env]),
        )
    )
    handler.set_name("akisnap")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "akisnap"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric_level, logging.INFO))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger named ``name`` (the module's ``__name__``); lazy, so module-level loggers
    follow a later :func:`configure_logging`."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
