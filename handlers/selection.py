"""What a partial restore asks for: ids, columns, ``--where`` conditions and a limit.

The ``--where`` grammar (docs/DESIGN.md, "Partial restore") is one comparison per expression,
``COLUMN OP VALUE``: COLUMN is ``external_id`` or ``inserted_at``, OP one of
``= != < <= > >=``, VALUE the rest of the expression with surrounding spaces removed. For
``inserted_at`` VALUE is an ISO-8601 instant with its offset (``2026-01-01T00:00:00Z``); for
``external_id`` it is compared as text (code point order). A row whose external_id is null
matches no condition on it. Several expressions are ANDed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import reduce
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from handlers.errors import InvalidRequestError, SelectionError
from handlers.model import ID_TYPE, TIMESTAMP_TYPE

COLUMNS = ("document_id", "external_id", "vector", "metadata", "inserted_at")
WHERE_COLUMNS = ("external_id", "inserted_at")
WHERE_USAGE = (
    "--where takes COLUMN OP VALUE: COLUMN external_id or inserted_at, OP one of "
    "= != < <= > >=, e.g. inserted_at>=2026-01-01T00:00:00Z or external_id=abc"
)
_WHERE = re.compile(r"^\s*(external_id|inserted_at)\s*(<=|>=|!=|=|<|>)(.*)$", re.DOTALL)
_COMPARE = {
    "=": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}
IDS_EXAMPLES = 5


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: str | datetime

    def mask(self, table: pa.Table) -> pa.ChunkedArray:
        column = table.column(self.column)
        scalar = pa.scalar(self.value, TIMESTAMP_TYPE if self.column == "inserted_at" else None)
        return pc.fill_null(_COMPARE[self.op](column, scalar), False)

    def may_hold(self, low: object, high: object) -> bool:
        """Whether a row group whose column spans [low, high] can hold a matching row."""
        value = self.value
        if self.op == "=":
            return bool(low <= value <= high)  # type: ignore[operator]
        if self.op in ("<", "<="):
            return bool(low < value or (self.op == "<=" and low == value))  # type: ignore[operator]
        if self.op in (">", ">="):
            return bool(high > value or (self.op == ">=" and high == value))  # type: ignore[operator]
        return not low == high == value


@dataclass(frozen=True)
class Selection:
    """Rows whose id is in ``ids`` (all, when None) and that meet every condition, the
    first ``limit`` of them in restore order, with only ``columns``."""

    ids: pa.Array | None = None
    columns: tuple[str, ...] = COLUMNS
    where: tuple[Condition, ...] = ()
    limit: int | None = None
    strict: bool = False

    @property
    def key_columns(self) -> list[str]:
        """What must be read to decide whether a row is selected."""
        return ["document_id", *sorted({c.column for c in self.where} - {"document_id"})]

    def row_mask(self, keys: pa.Table) -> pa.ChunkedArray | pa.Array:
        masks = [c.mask(keys) for c in self.where]
        if self.ids is not None:
            masks.append(pc.is_in(keys.column("document_id"), value_set=self.ids))
        if not masks:
            return pa.array(np.ones(keys.num_rows, dtype=bool))
        return reduce(pc.and_, masks)


def parse_columns(text: str | None) -> tuple[str, ...]:
    if text is None:
        return COLUMNS
    asked = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in asked if name not in COLUMNS]
    if unknown or not asked:
        raise SelectionError(
            f"--columns {text!r}: give a comma list of {', '.join(COLUMNS)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return tuple(name for name in COLUMNS if name in asked)  # the snapshot's order


def parse_where(expressions: Sequence[str]) -> tuple[Condition, ...]:
    return tuple(_condition(text) for text in expressions)


def _condition(text: str) -> Condition:
    match = _WHERE.match(text)
    if match is None:
        raise SelectionError(f"--where {text!r}: {WHERE_USAGE}")
    column, op, raw = match.group(1), match.group(2), match.group(3).strip()
    if column == "external_id":
        return Condition(column, op, raw)
    try:
        stamp = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        stamp = None
    if stamp is None or stamp.tzinfo is None:
        raise SelectionError(
            f"--where {text!r}: inserted_at needs an ISO-8601 instant with its offset, "
            "e.g. 2026-01-01T00:00:00Z"
        )
    return Condition(column, op, stamp)


def parse_limit(value: int | None) -> int | None:
    if value is not None and value < 0:
        raise SelectionError(f"--limit {value}: give a count of rows, 0 or more")
    return value


def load_ids(path: Path) -> pa.Array:
    """The unique document ids in ``path``: a .parquet with a document_id column, a .npy, or
    text with one UUID a line (blank lines ignored). Raises InvalidRequestError (bad input)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        raw = _parquet_ids(path)
    elif suffix == ".npy":
        raw = _npy_ids(path)
    else:
        raw = _text_ids(path)
    return pc.unique(pa.array(raw, ID_TYPE))


def _parquet_ids(path: Path) -> list[bytes]:
    try:
        column = pq.read_table(path, columns=["document_id"]).column("document_id")
    except (pa.ArrowException, KeyError) as exc:
        raise InvalidRequestError(
            f"--ids {path.name}: no readable document_id column ({exc})"
        ) from None
    return _id_values(column.to_pylist(), path)


def _npy_ids(path: Path) -> list[bytes]:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise InvalidRequestError(f"--ids {path.name}: not a plain .npy array ({exc})") from None
    if array.dtype == np.uint8 and array.ndim == 2 and array.shape[1] == 16:
        return [row.tobytes() for row in array]
    if array.ndim != 1 or array.dtype.kind not in "SVU":
        raise InvalidRequestError(
            f"--ids {path.name}: expected 16-byte ids (S16, V16 or uint8 n×16) or UUID "
            f"strings, found {array.dtype} of shape {array.shape}"
        )
    values = [bytes(v) if array.dtype.kind == "V" else v for v in array.tolist()]
    return _id_values(values, path)


def _text_ids(path: Path) -> list[bytes]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidRequestError(
            f"--ids {path.name}: not UTF-8 text with one UUID a line "
            "(name a .parquet or .npy file by its extension)"
        ) from None
    return _id_values([line.strip() for line in lines if line.strip()], path)


def _id_values(values: Sequence[object], path: Path) -> list[bytes]:
    ids = []
    for number, value in enumerate(values, 1):
        try:
            ids.append(_one_id(value))
        except (ValueError, TypeError):
            raise InvalidRequestError(
                f"--ids {path.name}: entry {number} ({str(value)[:40]!r}) is not a document id"
            ) from None
    return ids


def _one_id(value: object) -> bytes:
    if isinstance(value, bytes) and len(value) == 16:
        return value
    if isinstance(value, bytes):
        value = value.decode("ascii")
    if isinstance(value, str):
        return uuid.UUID(value).bytes
    raise TypeError(type(value).__name__)


def id_texts(ids: pa.Array, count: int = IDS_EXAMPLES) -> list[str]:
    return [str(uuid.UUID(bytes=raw)) for raw in ids.slice(0, count).to_pylist()]
