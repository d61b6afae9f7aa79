"""The bare scripts akisnap's whole processes are compared with, each run as its own process.

    python -m bench.bare create EXPORT OUT.parquet    pq.read_table + pq.write_table (zstd+BSS)
    python -m bench.bare restore SNAPSHOT OUT.parquet pq.read_table + pq.write_table (zstd+BSS)
    python -m bench.bare restore SNAPSHOT OUT.npy     pq.read_table + np.save of the vectors
    python -m bench.bare lance EXPORT OUT.lance       pq.read_table + lance.write_dataset

What a user would write with pyarrow alone: whole tables, default threading, akisnap's writer
settings (``handlers.codecs.parquet.writer_options("zstd")``). Imports only what each needs.
"""

from __future__ import annotations

import sys
from pathlib import Path


def create(export: Path, out: Path) -> None:
    import pyarrow.parquet as pq

    from handlers.codecs.parquet import writer_options

    pq.write_table(pq.read_table(export), out, **writer_options("zstd"))


def restore(snapshot: Path, out: Path) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(snapshot)
    if out.suffix == ".npy":
        import numpy as np

        column = table.column("vector").combine_chunks()
        values = column.flatten().to_numpy()
        np.save(out, values.reshape(len(column), column.type.list_size))
        return
    from handlers.codecs.parquet import writer_options

    pq.write_table(table, out, **writer_options("zstd"))


def lance_write(export: Path, out: Path) -> None:
    import lance
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(export)
    # Lance refuses fixed_size_binary(16) ids: the same cast as the seed scenarios' Lance ops.
    ids = table.column("document_id").cast(pa.binary())
    table = table.set_column(table.schema.get_field_index("document_id"), "document_id", ids)
    lance.write_dataset(table, str(out))


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("create", "restore", "lance"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, source, out = argv[0], Path(argv[1]), Path(argv[2])
    {"create": create, "restore": restore, "lance": lance_write}[mode](source, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
