"""DingTalk custom robot: markdown messages, optionally signed with the robot's secret."""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from typing import Any

from ..errors import NotifyError
from .base import DEFAULT_TIMEOUT_S, Notifier, check_code, check_url, clip

API_URL = "https://oapi.dingtalk.com/robot/send"
MAX_TEXT_BYTES = 18_000  # the robot refuses messages over 20,000 bytes; keep room for JSON


def sign(secret: str, timestamp_ms: int) -> str:
    """HMAC-SHA256 of ``"{timestamp}\\n{secret}"`` keyed by the secret, base64, URL-encoded."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode(),
                      hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest))


class DingTalkNotifier(Notifier):
    """Posts to a DingTalk group robot (``token`` or full ``url``; ``secret`` to sign)."""

    def __init__(self, *, token: str = "", url: str = "", secret: str = "", prefix: str = "",
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(prefix=prefix, timeout=timeout)
        if bool(token) == bool(url):
            raise NotifyError("dingtalk notifier: give params.token or params.url (one of them)")
        token_url = f"{API_URL}?access_token={urllib.parse.quote(token, safe='')}"
        self.url = check_url(url, "dingtalk notifier: params.url") if url else token_url
        self.secret = secret

    def signed_url(self, timestamp_ms: int | None = None) -> str:
        """The URL to post to: with ``&timestamp=..&sign=..`` when a secret is set."""
        if not self.secret:
            return self.url
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        joiner = "&" if urllib.parse.urlsplit(self.url).query else "?"
        return f"{self.url}{joiner}timestamp={ts}&sign={sign(self.secret, ts)}"

    def send(self, title: str, text: str, level: str = "error", **fields: Any) -> None:
        title = self.title(title)
        # DingTalk markdown joins single newlines; a blank line keeps each line (tracebacks)
        body = clip(f"#### {title}\n\n" + text.replace("\n", "\n\n"), MAX_TEXT_BYTES)
        answer = self.post(self.signed_url(),
                           {"msgtype": "markdown", "markdown": {"title": title, "text": body}})
        check_code(answer, "DingTalk", ("errcode",), ("errmsg",))
