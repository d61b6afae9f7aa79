"""Clean-up: Ctrl-C leaves no spool behind; prune --orphans sweeps the spools of dead
processes and empty snapshot folders; files get the process umask, not 0600."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from daemon import exit_codes
from tests.support import REPO, akisnap_process, create_snapshot, run_cli


def ended(process: subprocess.Popen[str]) -> str:
    """Its stderr once it exits; killed (and the test failed) if it does not within 60 s."""
    try:
        return process.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError("akisnap did not end within 60 s of SIGINT") from None


# `akisnap snapshots create` through the real entry point, reading an export that never ends:
# once the encoder's thread is reading, the export leaves a half-written file in the process
# spool and says "ready"; the test interrupts it at exactly that moment. Without a stop
# between batches the process would read on forever.
ENDLESS_CREATE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import numpy as np
    from handlers import sources
    from handlers.model import DocumentBatch
    from daemon import cli

    def endless():
        rng = np.random.default_rng(0)
        for start in range(0, 10**12, 1000):
            yield DocumentBatch.from_arrays(
                rng.random((1000, 8), dtype=np.float32), id_seed="endless", first_position=start
            )
            if start == 1000:
                spool = Path(sys.argv[-1]) / ".akisnap-tmp" / f"pid-{os.getpid()}"
                (spool / "half-written.parquet").write_bytes(b"x" * 1_000_000)
                print("ready", flush=True)

    async def endless_source(self, job):
        return sources.OpenedSource(endless(), "an endless export")

    sources.SourceReader.__call__ = endless_source
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def test_ctrl_c_stops_the_encoder_and_removes_the_spool(tmp_path: Path) -> None:
    """SIGINT while the encoder's thread reads an export: it stops at the next batch; exit
    130, one 'interrupted' line, and the process spool (half-written file included) is gone."""
    np.save(tmp_path / "v.npy", np.ones((1, 8), dtype=np.float32))
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKISNAP_")}
    argv = ["snapshots", "create", "--collection", "c", "--from", str(tmp_path / "v.npy")]
    process = subprocess.Popen(
        [sys.executable, "-c", ENDLESS_CREATE, *argv, "--store", str(store)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    spool = store / ".akisnap-tmp" / f"pid-{process.pid}"
    assert (spool / "half-written.parquet").is_file()
    process.send_signal(signal.SIGINT)
    err = ended(process)
    assert process.returncode == exit_codes.INTERRUPTED
    assert err.strip() == "akisnap: error: interrupted"
    assert not spool.exists()


def test_prune_orphans_sweeps_dead_spools_and_empty_folders(tmp_path: Path) -> None:
    """A dead process's spool and an empty snapshot folder are removed; a live one is kept."""
    np.save(tmp_path / "v.npy", np.ones((10, 4), dtype=np.float32))
    store = tmp_path / "store"
    code, _, err = create_snapshot(tmp_path / "v.npy", store)
    assert code == 0, err
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = store / ".akisnap-tmp" / f"pid-{int(gone.stdout)}"
    dead.mkdir(parents=True)
    (dead / "part.parquet").write_bytes(b"x" * 4096)
    live = store / ".akisnap-tmp" / f"pid-{os.getpid()}"
    live.mkdir()
    empty = store / "snapshots" / "c" / "0f0f0f0f-0000-5000-8000-000000000000"
    empty.mkdir()
    os.utime(empty, (0, 0))  # untouched for decades: past any grace period
    code, out, err = run_cli(["snapshots", "prune", "--orphans", "--yes", "--store", str(store)])
    assert code == 0, err
    assert f"removed spool of a process that is gone: {dead} (4.0 KiB)" in out
    assert f"removed empty folder snapshots/c/{empty.name}/" in out
    assert not dead.exists() and not empty.exists() and live.is_dir()
    code, out, _ = run_cli(["snapshots", "list", "--store", str(store)])
    assert code == 0 and "1 snapshot in" in out


def test_files_get_the_process_umask(tmp_path: Path) -> None:
    """Under umask 027 the metadata file, the parts and a restored file are 0640, not 0600."""
    np.save(tmp_path / "v.npy", np.ones((10, 4), dtype=np.float32))
    store = tmp_path / "store"
    umask = ("sh", "-c", 'umask 027 && exec "$0" "$@"')
    created = akisnap_process(
        "snapshots", "create", "--collection", "c", "--from", str(tmp_path / "v.npy"),
        "--store", str(store), prefix=umask,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    (metadata,) = (store / "snapshots" / "c").glob("*.metadata.json")
    parts = list((store / "snapshots" / "c").glob("*/part-*"))
    restored = akisnap_process(
        "snapshots", "restore", metadata.name.split(".")[0], "--out", str(tmp_path / "r.npy"),
        "--store", str(store), prefix=umask,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    for path in [metadata, *parts, tmp_path / "r.npy"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
