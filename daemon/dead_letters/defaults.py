"""Defaults of ``akisnap dlq replay``, apart from the replay module so the CLI's parser (which
must not import aiokafka) can show them."""

from __future__ import annotations

DEFAULT_REPLAY_GROUP = "akisnap-dlq-replay"
DEFAULT_MAX_REPLAYS = 3
DEFAULT_RATE_PER_SECOND = 50.0
