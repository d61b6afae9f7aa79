"""The one parser of locations: every ``--from``, ``--store``, ``--out``, ``migrate --from``,
store root and request source goes through :func:`parse_location`.

Accepted: ``s3://bucket/key``, ``file:///abs/path``, ``file://localhost/abs``,
``file://./relative`` (relative to the working directory), and plain paths (absolute,
relative or ``~``). A URI is percent-decoded (``file:///a%20b`` is the directory ``a b``,
everywhere); a plain path is taken literally. Local paths are resolved (symlinks, ``..``)
before any allow-list check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from handlers.errors import SourceError


@dataclass(frozen=True)
class Location:
    scheme: str  # "file" or "s3"
    path: str  # file: the absolute local path; s3: "/" + the decoded key
    bucket: str = ""

    @property
    def key(self) -> str:
        return self.path.lstrip("/")

    @property
    def display(self) -> str:
        """For people: the path or key as it is, not percent-encoded."""
        return f"s3://{self.bucket}/{self.key}" if self.scheme == "s3" else f"file://{self.path}"

    @property
    def uri(self) -> str:
        """The canonical URI, percent-encoded: parse_location(loc.uri) == loc."""
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{quote(self.key, safe='/')}".rstrip("/")
        return Path(self.path).as_uri()

    @property
    def local_path(self) -> Path:
        if self.scheme != "file":
            raise SourceError(f"{self.display} is not a local path")
        return Path(self.path)

    def is_under(self, root: Location) -> bool:
        if self.scheme != root.scheme or self.bucket != root.bucket:
            return False
        base = root.path.rstrip("/")
        return self.path == base or self.path.startswith(base + "/") or base == ""


def parse_location(text: str) -> Location:
    """A canonical location from a URI or a plain path (SourceError when unusable)."""
    if not isinstance(text, str) or not text:
        raise SourceError("location is empty")
    if "\x00" in text or "%00" in text:
        raise SourceError(f"location {text!r} holds a NUL byte")
    parts = urlsplit(text)
    if "://" not in text and parts.scheme not in ("file", "s3"):
        return Location("file", os.path.realpath(os.path.expanduser(text)))
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost", "."):
            raise SourceError(f"{text!r}: file URIs name no host")
        raw = unquote(parts.path) if parts.netloc != "." else "./" + unquote(parts.path)
        return Location("file", os.path.realpath(raw))
    if parts.scheme == "s3":
        key = unquote(parts.path).lstrip("/")
        if not parts.netloc or any(seg in {".", ".."} for seg in key.split("/")):
            raise SourceError(f"{text!r} is not a plain s3://bucket/key URI")
        return Location("s3", "/" + key, bucket=parts.netloc)
    raise SourceError(f"{text!r} has unsupported scheme {parts.scheme!r} (file, s3 or a path)")


def to_uri(text: str) -> str:
    """The canonical URI of a URI or plain path (what the CLI hands on)."""
    return parse_location(text).uri
