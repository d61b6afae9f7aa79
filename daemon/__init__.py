"""akisnap's daemon: settings, Kafka in and out, the pipeline around the handlers, retries,
dead letters, metrics and health over HTTP, logging and the CLI. Imports ``handlers``; never
the reverse."""

from __future__ import annotations

import handlers


def __getattr__(name: str) -> str:
    """``daemon.__version__``: the installed distribution's version, looked up only when
    asked for (importlib.metadata is slow to import, and ``akisnap --help`` must be fast)."""
    if name != "__version__":
        raise AttributeError(f"module 'daemon' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("akidb-snapshotter")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return handlers.__version__
