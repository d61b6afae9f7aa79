"""A partial restore's output: any subset of the snapshot's columns, streamed part by part
into .parquet, .arrow, .jsonl or .npy (vectors only), so a large selection is never held
whole in memory."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from handlers.codecs.documents_json import table_to_documents
from handlers.model import fixed_size_list_to_matrix

NPY_MAGIC = b"\x93NUMPY\x01\x00"
NPY_ALIGN = 64


class SelectedOutput:
    """Write tables of ``schema`` to ``path`` in the format ``kind``; ``max_rows`` bounds what
    may come (an .npy header is written first, sized for it, and rewritten at the end)."""

    def __init__(self, kind: str, path: Path, schema: pa.Schema, max_rows: int) -> None:
        self.kind = kind
        self.rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._arrow: pa.ipc.RecordBatchFileWriter | None = None
        self._handle: BinaryIO | None = None
        self._dimension = 0
        if kind == "parquet":
            self._parquet = pq.ParquetWriter(path, schema, compression="zstd")
        elif kind == "arrow":
            self._sink = pa.OSFile(str(path), "wb")
            self._arrow = pa.ipc.new_file(self._sink, schema)
        else:
            self._handle = path.open("wb")
        if kind == "npy":
            self._dimension = int(schema.field("vector").type.list_size)
            self._header_size = len(npy_header(max_rows, self._dimension))
            self._handle_or_fail().write(npy_header(max_rows, self._dimension))

    def write(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        if self._parquet is not None:
            self._parquet.write_table(table)
        elif self._arrow is not None:
            self._arrow.write_table(table)
        elif self.kind == "npy":
            vectors = fixed_size_list_to_matrix(table.column("vector").combine_chunks())
            self._handle_or_fail().write(np.ascontiguousarray(vectors, dtype="<f4").data)
        else:
            lines = (
                json.dumps(doc, ensure_ascii=False) + "\n" for doc in table_to_documents(table)
            )
            self._handle_or_fail().write("".join(lines).encode("utf-8"))

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        elif self._arrow is not None:
            self._arrow.close()
            self._sink.close()
        else:
            handle = self._handle_or_fail()
            if self.kind == "npy":
                handle.seek(0)
                handle.write(npy_header(self.rows, self._dimension, self._header_size))
            handle.close()

    def _handle_or_fail(self) -> BinaryIO:
        assert self._handle is not None
        return self._handle


def npy_header(rows: int, dimension: int, size: int | None = None) -> bytes:
    """A .npy 1.0 header of float32 (rows, dimension), padded with spaces to ``size`` bytes
    (default: the next multiple of 64), so a smaller count can overwrite a larger one."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dimension}), }}"
    body = text.encode("latin-1")
    if size is None:
        size = -(-(len(NPY_MAGIC) + 2 + len(body) + 1) // NPY_ALIGN) * NPY_ALIGN
    header_len = size - len(NPY_MAGIC) - 2
    padding = b" " * (header_len - len(body) - 1)
    return NPY_MAGIC + struct.pack("<H", header_len) + body + padding + b"\n"
