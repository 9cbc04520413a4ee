"""WeCom (WeChat Work) group robot: markdown messages."""
from __future__ import annotations

import urllib.parse
from typing import Any

from ..errors import NotifyError
from .base import DEFAULT_TIMEOUT_S, Notifier, check_code, check_url, clip

API_URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
MAX_CONTENT_BYTES = 4_000  # the robot refuses markdown content over 4,096 bytes
COLORS = {"error": "warning", "critical": "warning", "warning": "warning"}  # else "info"


class WeComNotifier(Notifier):
    """Posts to a WeCom group robot (``key`` or full ``url``)."""

    def __init__(self, *, key: str = "", url: str = "", prefix: str = "",
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(prefix=prefix, timeout=timeout)
        if bool(key) == bool(url):
            raise NotifyError("wecom notifier: give params.key or params.url (one of them)")
        key_url = f"{API_URL}?key={urllib.parse.quote(key, safe='')}"
        self.url = check_url(url, "wecom notifier: params.url") if url else key_url

    def send(self, title: str, text: str, level: str = "error", **fields: Any) -> None:
        color = COLORS.get(level.lower(), "info")
        content = clip(f'<font color="{color}">**{self.title(title)}**</font>\n{text}',
                       MAX_CONTENT_BYTES)
        answer = self.post(self.url, {"msgtype": "markdown", "markdown": {"content": content}})
        check_code(answer, "WeCom", ("errcode",), ("errmsg",))
