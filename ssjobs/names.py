"""The one rule for topic names, shared by the config, the producer and the scoreboard:
a topic is part of every Redis key of its queue (as a Cluster hash tag) and of the
scoreboard slot, so it is non-empty, has no whitespace, '{' or '}', and is at most
MAX_TOPIC_BYTES of UTF-8.

Layer 0: imports only ``urls`` (for ``show``)."""
from __future__ import annotations

import re
from typing import Any

from .urls import show

MAX_TOPIC_BYTES = 64   # the scoreboard keeps the topic in a field of this size
_TOPIC = re.compile(r"[^\s{}]+")


def topic_problem(topic: Any) -> str | None:
    """Why ``topic`` cannot be a topic (None when it can)."""
    if not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
        shown = show(topic) if isinstance(topic, str) else type(topic).__name__
        return f"must be non-empty, without whitespace, '{{' or '}}', got {shown}"
    size = len(topic.encode())
    if size > MAX_TOPIC_BYTES:
        return f"must be at most {MAX_TOPIC_BYTES} bytes (UTF-8), got {size}"
    return None


def check_topic(topic: Any) -> str:
    """``topic`` itself, or ValueError saying why it is not one."""
    problem = topic_problem(topic)
    if problem is not None:
        raise ValueError(f"invalid topic: {problem}")
    return topic
