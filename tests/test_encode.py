"""The encode stage: bounded parts, parallel part writers, nothing left behind on failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from handlers import encode
from handlers.encode import Encoder
from handlers.errors import InvalidDocumentsError
from handlers.hashing import sha256_file
from handlers.job import InlineSource, SnapshotJob
from handlers.model import DocumentBatch, bytes_per_row_estimate
from tests.support import unit_vectors

JOB = SnapshotJob("c", "r", InlineSource([{"id": "x"}]))


def batches(count: int, rows: int, dim: int) -> list[DocumentBatch]:
    return [
        DocumentBatch.from_arrays(
            unit_vectors(rows, dim, seed=i), id_seed="s", first_position=i * rows
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("cores", [1, 2, 7])
def test_part_layout_depends_on_the_data_not_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int
) -> None:
    """Even parts, as many as the part size needs, the same bytes whatever the core count."""
    monkeypatch.setattr(encode, "usable_cpus", lambda: cores)
    source = batches(6, 1000, 32)
    part_bytes = 2500 * bytes_per_row_estimate(32)
    encoded = Encoder(tmp_path, part_bytes).encode_blocking(JOB, iter(source), 6000)
    assert [part.rows for part in encoded.parts] == [2000, 2000, 2000]
    assert [part.index for part in encoded.parts] == [0, 1, 2]
    assert all(part.sha256 == sha256_file(part.path) for part in encoded.parts)
    assert all(part.size == part.path.stat().st_size for part in encoded.parts)
    single = Encoder(tmp_path / "one", part_bytes)
    (tmp_path / "one").mkdir()
    monkeypatch.setattr(encode, "usable_cpus", lambda: 1)
    again = single.encode_blocking(JOB, iter(source), 6000)
    assert [p.sha256 for p in again.parts] == [p.sha256 for p in encoded.parts]
    encoded.discard()
    again.discard()
    (tmp_path / "one").rmdir()
    assert list(tmp_path.iterdir()) == []


def test_part_size_bounds_parts_without_a_row_count(tmp_path: Path) -> None:
    """Without a row count, parts are cut at the configured size."""
    source = batches(4, 1000, 64)
    encoded = Encoder(tmp_path, 100_000).encode_blocking(JOB, iter(source))
    assert len(encoded.parts) > 10 and sum(p.rows for p in encoded.parts) == 4000
    encoded.discard()


def test_failure_mid_stream_leaves_no_spool_files(tmp_path: Path) -> None:
    """A bad batch after good ones raises, and every part file is removed."""

    def stream() -> object:
        yield from batches(3, 200, 16)
        raise InvalidDocumentsError("boom in the source")

    with pytest.raises(InvalidDocumentsError, match="boom"):
        Encoder(tmp_path, 8000).encode_blocking(JOB, iter(stream()))  # type: ignore[call-overload]
    assert list(tmp_path.iterdir()) == []


def test_duplicate_ids_across_batches_are_refused(tmp_path: Path) -> None:
    """The same id in two different batches is caught by the global check."""
    first = DocumentBatch.from_arrays(np.ones((3, 4), dtype=np.float32), id_seed="a")
    again = DocumentBatch.from_arrays(np.ones((3, 4), dtype=np.float32), id_seed="a")
    with pytest.raises(InvalidDocumentsError, match="appears more than once"):
        Encoder(tmp_path, 1 << 20).encode_blocking(JOB, iter([first, again]))
    assert list(tmp_path.iterdir()) == []


def test_mixed_dimensions_across_batches_are_refused(tmp_path: Path) -> None:
    """A later batch of another dimension is refused."""
    with pytest.raises(InvalidDocumentsError, match="mixed dimensions"):
        Encoder(tmp_path, 1 << 20).encode_blocking(
            JOB, iter([batches(1, 5, 4)[0], batches(1, 5, 8)[0]])
        )


def test_a_snapshot_that_fits_one_part_stays_one_part(tmp_path: Path) -> None:
    """Below the part size nothing is split, even with several cores."""
    source = batches(6, 1000, 32)
    encoded = Encoder(tmp_path, 64 * 1024 * 1024).encode_blocking(JOB, iter(source), 6000)
    assert [part.rows for part in encoded.parts] == [6000]
    encoded.discard()
