"""The settings error, apart from the settings model so the CLI can name it without
importing pydantic (``akisnap --help`` stays fast)."""

from __future__ import annotations


class SettingsError(ValueError):
    """The settings are unusable. ``str()`` is a header plus one ``FIELD: reason`` line per
    wrong field; ``problems`` holds the same as (field, reason) pairs, where the field is
    what the user set: an ``AKISNAP_*`` variable, ``--config FILE, key K`` or a ``--flag``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = [f"{field}: {reason}" for field, reason in problems]
        super().__init__("invalid settings:\n" + "\n".join(lines))
