"""Logging: structlog, one JSON object per line (``console`` for people), on stderr.

Context bound with ``structlog.contextvars.bind_contextvars(request_id=…, collection_id=…,
snapshot_id=…)`` lands on every line of that task, including lines of the libraries that log
through the standard library (aiokafka, botocore), which are rendered the same way. Values of
keys that look secret are replaced by ``***`` before rendering.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "***"
SECRET_KEY_PARTS = ("secret", "password", "passwd", "access_key", "secret_key", "token")
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Chatty at DEBUG; kept at INFO or above whatever the level.
QUIET_LIBRARIES = ("botocore", "aiobotocore", "urllib3", "asyncio")


def is_secret_key(key: object) -> bool:
    return isinstance(key, str) and any(part in key.lower() for part in SECRET_KEY_PARTS)


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


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (pytest and the CLI may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(
    format: str = "json", level: str = "info", *, stream: TextIO | None = None
) -> None:
    """Route structlog and the standard library through one renderer on stderr (or
    ``stream``). Safe to call again: the previous configuration is replaced."""
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
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
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
