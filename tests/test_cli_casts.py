"""A non-float32 export is converted only with a notice and `source_dtype` in the metadata,
or refused with --exact; a float32 one is stored as is, with no such field."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daemon import exit_codes
from tests.support import create_snapshot


@pytest.fixture
def exports(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> Path:
    rng = np.random.default_rng(3)
    np.save(tmp_path / "f64.npy", rng.random((20, 4)))
    np.save(tmp_path / "i32.npy", rng.integers(0, 9, (20, 4), dtype=np.int32))
    np.save(tmp_path / "f16.npy", rng.random((20, 4)).astype(np.float16))
    np.save(tmp_path / "f32.npy", rng.random((20, 4), dtype=np.float32))
    doubles = pa.array(rng.random((20, 4)).tolist(), type=pa.list_(pa.float64()))
    ids = pa.array([uuid.UUID(int=i + 1).bytes for i in range(20)], type=pa.binary(16))
    pq.write_table(pa.table({"document_id": ids, "vector": doubles}), tmp_path / "doubles.parquet")
    return tmp_path


def create(exports: Path, name: str, *extra: str) -> tuple[int, str, str]:
    return create_snapshot(exports / name, exports / "store", *extra)


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("f64.npy", "float64"),
        ("i32.npy", "int32"),
        ("f16.npy", "float16"),
        ("doubles.parquet", "float64"),
    ],
)
def test_conversion_is_announced_and_recorded(exports: Path, name: str, dtype: str) -> None:
    """float64, int32, float16 .npy and list<double> Parquet: a note, and source_dtype."""
    code, out, err = create(exports, name)
    assert code == 0, err
    assert f"note      vectors converted from {dtype} to float32" in out
    code, out, err = create(exports, name, "--json", "--request-id", f"again-{name}")
    assert code == 0, err
    assert json.loads(out)["source_dtype"] == dtype
    (metadata,) = [
        path
        for path in (exports / "store" / "snapshots" / "c").glob("*.metadata.json")
        if json.loads(path.read_text())["request_id"] == f"again-{name}"
    ]
    assert json.loads(metadata.read_text())["source_dtype"] == dtype


@pytest.mark.parametrize("name", ["f64.npy", "doubles.parquet"])
def test_exact_refuses_a_conversion(exports: Path, name: str) -> None:
    """--exact: refused as bad input (exit 5), nothing written."""
    code, out, err = create(exports, name, "--exact")
    assert code == exit_codes.BAD_INPUT and out == ""
    assert "not float32: --exact refuses to convert them" in err
    assert not list((exports / "store").glob("snapshots/c/*.metadata.json"))


def test_float32_export_has_no_note_and_no_field(exports: Path) -> None:
    """A float32 export passes --exact and its metadata has no source_dtype."""
    code, out, err = create(exports, "f32.npy", "--exact", "--json")
    assert code == 0, err
    assert "source_dtype" not in json.loads(out)
