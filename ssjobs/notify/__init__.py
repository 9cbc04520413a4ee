"""Notifiers: DingTalk, Feishu, WeCom, Slack, a generic webhook, or a user's own class.

``make_notifier`` builds one from the ``[notifier]`` config; :class:`AsyncSender` sends
through it from a background thread so that job processing never waits on a chat server.
"""
from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import NotifyError
from ..importing import import_spec
from .base import (
    DEFAULT_TIMEOUT_S,
    Notifier,
    NotifyHTTPError,
    NotifyRejected,
    NotifyUnreachable,
    post_json,
)
from .sender import AsyncSender

__all__ = [
    "AsyncSender", "BUILTIN", "Notifier", "NotifyError", "NotifyHTTPError", "NotifyRejected",
    "NotifyUnreachable", "error_sink", "make_notifier", "post_json", "send_test_message",
]

BUILTIN = {
    "dingtalk": "ssjobs.notify.dingtalk:DingTalkNotifier",
    "webhook": "ssjobs.notify.webhook:WebhookNotifier",
    "slack": "ssjobs.notify.slack:SlackNotifier",
    "feishu": "ssjobs.notify.feishu:FeishuNotifier",
    "wecom": "ssjobs.notify.wecom:WeComNotifier",
}


def _import(spec: str) -> Any:
    try:
        return import_spec(spec)
    except (ImportError, AttributeError, ValueError, SyntaxError) as e:
        raise NotifyError(f"notifier class {spec!r} cannot be imported: {e}") from e


def make_notifier(kind: str, params: Mapping[str, Any], *,
                  timeout: float = DEFAULT_TIMEOUT_S) -> Notifier:
    """Build the notifier named by ``notifier.class`` with ``notifier.params``.

    ``kind`` is a built-in name (``dingtalk``, ``webhook``, ``slack``, ``feishu``, ``wecom``)
    or ``"module:Class"``, which is called with ``**params`` and must have a ``send`` method.
    """
    if kind in BUILTIN:
        cls, kwargs = _import(BUILTIN[kind]), {**params, "timeout": timeout}
    elif ":" in kind:
        cls, kwargs = _import(kind), dict(params)
    else:
        raise NotifyError(f"unknown notifier {kind!r}: expected one of {', '.join(BUILTIN)} "
                          f"or 'module:Class'")
    try:
        notifier = cls(**kwargs)
    except TypeError as e:  # a missing or unexpected parameter
        raise NotifyError(f"notifier {kind!r}: bad params: {e}") from e
    if not callable(getattr(notifier, "send", None)):
        raise NotifyError(f"notifier {kind!r} has no send() method")
    return notifier  # type: ignore[no-any-return]


def send_test_message(notifier: Notifier) -> str | None:
    """Send one test message now (``ssjobs check --notify``): None, or the exact error."""
    try:
        notifier.send("ssjobs test message",
                      f"Test message from ssjobs on {socket.gethostname()}: "
                      "notifications reach this channel.", level="info")
    except NotifyError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a user's notifier may raise anything
        return f"{type(e).__name__}: {e}"
    return None


def error_sink(sender: AsyncSender) -> Callable[[dict[str, Any]], None]:
    """A sink for :func:`ssjobs.logs.add_error_sink` that forwards ERROR lines to ``sender``.

    The failed runs of one topic (records with ``topic`` and ``job_id``) are one key: the
    first is sent at once, the rest of that ``repeat_interval`` are summed up in one message
    with their count. Other repeats are keyed on the logger and the last traceback line
    (else the message's first line with numbers blanked).
    """

    def sink(record: dict[str, Any]) -> None:
        exc = str(record.get("exc") or "").strip()
        text = f"{record['msg']}\n{exc}" if exc else str(record["msg"])
        if record.get("job_id") and record.get("topic"):
            key = f"{record['logger']}|failures of {record['topic']}"
        else:
            key = f"{record['logger']}|{exc.splitlines()[-1] if exc else _repeat_key(record)}"
        fields = {k: record[k] for k in ("topic", "job_id", "attempt") if k in record}
        sender.submit(f"{record['level']} on {socket.gethostname()} ({record['role']})", text,
                      level=str(record["level"]).lower(), key=key, **fields)

    return sink


def _repeat_key(record: dict[str, Any]) -> str:
    """What makes two failure lines "the same": "job 01H.. on 'q' failed (attempt 2): X"
    and "job 01J.. on 'q' failed (attempt 1): X" are."""
    first = (str(record["msg"]).splitlines() or [""])[0]
    if job_id := record.get("job_id"):
        first = first.replace(str(job_id), "<job>")
    return re.sub(r"\d+", "#", first)
