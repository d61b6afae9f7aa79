"""Thrift's compact protocol, the encoding of Parquet's footer, page headers and page index.

pyarrow reads a Parquet file by whole column chunks and exposes neither page headers nor the
offset index; partial restore needs both to fetch single pages (handlers.codecs.parquet_pages).
A decoded struct keeps each field's wire type, so it re-encodes to the same bytes after edits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(13)

Field = tuple[int, Any]
"""A field's wire type and value: a struct is a dict of field id to Field, a list is
(element type, values), a bool field's value is its type (TRUE or FALSE)."""


class ThriftError(ValueError):
    """Bytes that are not the compact encoding of a Thrift struct."""


@dataclass
class Reader:
    data: bytes | memoryview
    pos: int = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ThriftError("truncated Thrift data")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def varint(self) -> int:
        shift = result = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7
            if shift > 70:
                raise ThriftError("varint too long")

    def zigzag(self) -> int:
        value = self.varint()
        return (value >> 1) ^ -(value & 1)

    def take(self, count: int) -> bytes:
        if count < 0 or self.pos + count > len(self.data):
            raise ThriftError("truncated Thrift data")
        chunk = bytes(self.data[self.pos : self.pos + count])
        self.pos += count
        return chunk

    def value(self, kind: int) -> Any:
        if kind in (TRUE, FALSE):
            return self.byte() == TRUE
        if kind == BYTE:
            return self.byte()
        if kind in (I16, I32, I64):
            return self.zigzag()
        if kind == DOUBLE:
            return struct.unpack("<d", self.take(8))[0]
        if kind == BINARY:
            return self.take(self.varint())
        if kind in (LIST, SET):
            return self.sequence()
        if kind == STRUCT:
            return self.struct()
        raise ThriftError(f"unsupported Thrift type {kind}")

    def sequence(self) -> tuple[int, list[Any]]:
        header = self.byte()
        size, kind = header >> 4, header & 0x0F
        if size == 15:
            size = self.varint()
        return kind, [self.value(kind) for _ in range(size)]

    def struct(self) -> dict[int, Field]:
        fields: dict[int, Field] = {}
        last = 0
        while True:
            header = self.byte()
            kind = header & 0x0F
            if kind == STOP:
                return fields
            delta = header >> 4
            last = last + delta if delta else self.zigzag()
            fields[last] = (kind, kind if kind in (TRUE, FALSE) else self.value(kind))


def decode_struct(data: bytes | memoryview, pos: int = 0) -> tuple[dict[int, Field], int]:
    """The struct encoded at ``pos`` and the position just after it."""
    reader = Reader(data, pos)
    return reader.struct(), reader.pos


def encode_struct(fields: dict[int, Field]) -> bytes:
    out = bytearray()
    _write_struct(out, fields)
    return bytes(out)


def _write_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _write_zigzag(out: bytearray, value: int) -> None:
    _write_varint(out, (value << 1) ^ (value >> 63))


def _write_value(out: bytearray, kind: int, value: Any) -> None:
    if kind in (TRUE, FALSE):
        out.append(TRUE if value else FALSE)
    elif kind == BYTE:
        out.append(value & 0xFF)
    elif kind in (I16, I32, I64):
        _write_zigzag(out, value)
    elif kind == DOUBLE:
        out += struct.pack("<d", value)
    elif kind == BINARY:
        _write_varint(out, len(value))
        out += value
    elif kind in (LIST, SET):
        element, values = value
        if len(values) < 15:
            out.append(len(values) << 4 | element)
        else:
            out.append(0xF0 | element)
            _write_varint(out, len(values))
        for item in values:
            _write_value(out, element, item)
    elif kind == STRUCT:
        _write_struct(out, value)
    else:
        raise ThriftError(f"unsupported Thrift type {kind}")


def _write_struct(out: bytearray, fields: dict[int, Field]) -> None:
    last = 0
    for field_id in sorted(fields):
        kind, value = fields[field_id]
        if 0 < field_id - last <= 15:
            out.append((field_id - last) << 4 | kind)
        else:
            out.append(kind)
            _write_zigzag(out, field_id)
        last = field_id
        if kind not in (TRUE, FALSE):
            _write_value(out, kind, value)
    out.append(STOP)
