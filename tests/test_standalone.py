"""The repository stands alone: nothing a test, the demo or the docs use lives outside it."""

from __future__ import annotations

import subprocess

from daemon import sample_data
from tests.support import REPO, real_embeddings

OUTSIDE = "../" + "shared"  # spelled in two pieces so this file does not match itself
CHECKED = ["daemon", "handlers", "tests", "tools", "README.md", "Makefile", ".ci", "docs", "helm"]


def test_no_file_reaches_outside_the_repository() -> None:
    """No tracked file in the shipped or tested parts names the directory beside the repo."""
    found = subprocess.run(
        ["git", "grep", "-n", "-I", "-F", OUTSIDE, "--", *CHECKED],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 1, found.stdout


def test_sample_embeddings_are_in_the_repository_and_small() -> None:
    """The real-embedding slice is inside the repository, tracked, and a few MB at most."""
    path = sample_data.SAMPLE_EMBEDDINGS
    assert path.is_relative_to(REPO) and path.is_file()
    assert path.stat().st_size < 5 * 1024 * 1024
    assert (path.parent / "README.md").read_text(encoding="utf-8").count("SHA-256") == 1


def test_more_rows_than_the_slice_repeat_with_fresh_ids() -> None:
    """Asked for 5,000 rows, the helper repeats the 2,000 real ones with unique ids."""
    table = real_embeddings(5000)
    assert table.num_rows == 5000
    ids = table.column("document_id").to_pylist()
    assert len(set(ids)) == 5000
    vectors = table.column("vector")
    assert vectors[0].as_py() == vectors[2000].as_py() == vectors[4000].as_py()
