"""Generic webhook: POSTs ``{"title", "text", "level", "host", "time"}`` plus any fields."""
from __future__ import annotations

import socket
import time
from typing import Any

from .base import DEFAULT_TIMEOUT_S, Notifier, check_url


class WebhookNotifier(Notifier):
    """Posts JSON to any ``url`` (with optional extra ``headers``); any 2xx answer is success.

    Job alerts add ``topic`` and ``alert`` (the rule's name) to the body.
    """

    def __init__(self, *, url: str, headers: dict[str, str] | None = None, prefix: str = "",
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(prefix=prefix, timeout=timeout)
        self.url = check_url(url, "webhook notifier: params.url")
        self.headers = {str(k): str(v) for k, v in (headers or {}).items()}

    def send(self, title: str, text: str, level: str = "error", **fields: Any) -> None:
        body = {**fields, "title": self.title(title), "text": text, "level": level,
                "host": socket.gethostname(), "time": time.time()}
        self.post(self.url, body, headers=self.headers)
