"""The mode a plain ``open()`` would give a new file under this process's umask.

Temporary files (``mkstemp``) are created 0600; a file that is renamed into place from one
must be given this mode, or a reader under another account (a Spark job reading a snapshot,
a restore's consumer) sees the parts but not the metadata file.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

DEFAULT_UMASK = 0o022


@cache
def new_file_mode() -> int:
    return 0o666 & ~_umask()


def _umask() -> int:
    """The umask, read without changing it (os.umask() sets it: a race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return DEFAULT_UMASK
