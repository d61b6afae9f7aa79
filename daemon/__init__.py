"""akisnap's daemon: settings, Kafka in and out, the pipeline around the handlers, retries,
dead letters, metrics and health over HTTP, logging and the CLI. Imports ``handlers``; never
the reverse."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import handlers

try:
    __version__ = version("akidb-snapshotter")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = handlers.__version__
