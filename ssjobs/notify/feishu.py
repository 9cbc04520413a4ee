"""Feishu / Lark custom bot: text messages, optionally signed with the bot's secret."""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from .base import DEFAULT_TIMEOUT_S, Notifier, check_code, check_url, clip

MAX_TEXT_BYTES = 18_000  # the bot refuses request bodies over 20 KB; keep room for JSON


def sign(secret: str, timestamp_s: int) -> str:
    """HMAC-SHA256 keyed by ``"{timestamp}\\n{secret}"`` over an empty message, base64."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode("ascii")


class FeishuNotifier(Notifier):
    """Posts to a Feishu or Lark group bot webhook ``url`` (``secret`` to sign)."""

    def __init__(self, *, url: str, secret: str = "", prefix: str = "",
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(prefix=prefix, timeout=timeout)
        self.url = check_url(url, "feishu notifier: params.url")
        self.secret = secret

    def send(self, title: str, text: str, level: str = "error", **fields: Any) -> None:
        body: dict[str, Any] = {}
        if self.secret:
            ts = int(time.time())
            body.update(timestamp=str(ts), sign=sign(self.secret, ts))
        body.update(msg_type="text",
                    content={"text": clip(f"{self.title(title)}\n{text}", MAX_TEXT_BYTES)})
        # Current bots answer {"code": 0, "msg": "success"}; older ones {"StatusCode": 0}.
        check_code(self.post(self.url, body), "Feishu", ("code", "StatusCode"),
                   ("msg", "StatusMessage"))
