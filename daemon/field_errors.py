"""pydantic's error details in plain words, one reason per field: the request model
(daemon/events.py) and the settings (daemon/settings.py) speak the same way.

Input values are never quoted (they may be large or secret); only their JSON type, and only
when the caller kept the input in the details."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

_COMPARISONS = {
    "greater_than_equal": ">=",
    "less_than_equal": "<=",
    "greater_than": ">",
    "less_than": "<",
}
_TYPES = {
    "string_type": "a string",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "an array",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean",
}
_FIXED = {
    "missing": "field required",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
    "path_not_file": "must name an existing file",
    "path_type": "must name an existing file",
}


def reason(error: ErrorDetails, *, unknown: str = "unknown field") -> str:
    """``must be an integer (got string)``, ``must be >= 1``, ``unknown field``, …"""
    kind, ctx = error["type"], error.get("ctx") or {}
    got = f" (got {json_type(error['input'])})" if "input" in error else ""
    if kind in _FIXED:
        return _FIXED[kind]
    if kind == "extra_forbidden":
        return unknown
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    if kind in ("too_long", "string_too_long"):
        return f"is too long (at most {ctx.get('max_length')})"
    if kind in _COMPARISONS:
        return f"must be {_COMPARISONS[kind]} {next(iter(ctx.values()), '?')}"
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}{got}"
    if kind == "value_error":
        return strip_value_error(error["msg"])
    message = error["msg"]
    return message[:1].lower() + message[1:] + (got if kind == "source_kind" else "")


def strip_value_error(message: str) -> str:
    """A validator's own message, without the "Value error, " pydantic puts before it."""
    return message.removeprefix("Value error, ")


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
