"""Slack incoming webhook: one mrkdwn text message."""
from __future__ import annotations

from typing import Any

from .base import DEFAULT_TIMEOUT_S, Notifier, check_url, clip

MAX_TEXT_BYTES = 39_000  # Slack truncates text past 40,000 characters


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: ``&``, ``<`` and ``>`` (tracebacks say ``<module>``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackNotifier(Notifier):
    """Posts to a Slack incoming-webhook ``url`` (Slack answers ``ok`` or an HTTP error)."""

    def __init__(self, *, url: str, prefix: str = "", timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(prefix=prefix, timeout=timeout)
        self.url = check_url(url, "slack notifier: params.url")

    def send(self, title: str, text: str, level: str = "error", **fields: Any) -> None:
        message = f"*{escape(self.title(title))}*\n{escape(text)}"
        self.post(self.url, {"text": clip(message, MAX_TEXT_BYTES)})
