"""The one secret scrubber: log lines, dead-letter messages and store errors mask secrets here.

Two kinds of masking: known values (the settings' keys and passwords, in every form a renderer
may escape them to) and credential-shaped text whatever its value (``user:pass@`` in a URL, a
presigned query's signature, ``password=…``, an AWS access-key id). It lives in ``handlers``
because the S3 store needs it and ``handlers`` never imports ``daemon``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

REDACTED = "***"
# Shorter values are not scrubbed (they would mask ordinary words).
MIN_SECRET_CHARS = 4
SECRET_KEY_PARTS = ("secret", "password", "passwd", "access_key", "secret_key", "token")

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s:@]+:[^/\s@]*@")
_SIGNED_QUERY = re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"']+")
_NAMED_SECRET = re.compile(
    # not after a letter, digit or "/": AWS_SECRET_ACCESS_KEY=x is one, /etc/passwd: is not
    r"(?i)(?<![/A-Za-z0-9])(secret[_-]?(?:access[_-]?)?key|secret|password|passwd|token"
    r"|access[_-]?key(?:[_-]?id)?"
    r"|sasl[_-]?plain[_-]?password|authorization)(\"?'?\s*[:=]\s*\"?'?)[^\s\"',;&]+"
)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a secret (its value is never shown)."""
    return isinstance(key, str) and any(part in key.lower() for part in SECRET_KEY_PARTS)


def secret_forms(secrets: Iterable[str | None]) -> list[str]:
    """Each secret as it may appear in a rendered line: raw, JSON-escaped, ``repr``-escaped
    (as text and as UTF-8 bytes), and those escaped once more by JSON; longest first."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret or len(secret) < MIN_SECRET_CHARS:
            continue
        reprs = {secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]}
        for text in reprs:
            forms.update({text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]})
    return sorted(forms, key=len, reverse=True)


def scrub(text: str, forms: Iterable[str]) -> str:
    """``text`` with each of ``forms`` (from ``secret_forms``, computed once) masked."""
    for form in forms:
        if form in text:
            text = text.replace(form, REDACTED)
    return text


def mask_credentials(text: str) -> str:
    """``text`` with credential-shaped substrings masked, whatever their value."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    text = _SIGNED_QUERY.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _NAMED_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _AWS_KEY_ID.sub(REDACTED, text)


def scrub_secrets(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with the known ``secrets`` and anything credential-shaped masked."""
    return mask_credentials(scrub(text, secret_forms(secrets)))
