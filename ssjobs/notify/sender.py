"""Send notifications from a background thread, de-duplicated and rate-limited.

``submit`` never blocks and never raises: it only takes a short lock and appends to a queue.
A full queue drops the message (and counts it); a failed send is logged, never raised.

Repeats of one key within ``repeat_interval`` are held back and counted; when the interval
ends, one message says how many there were and shows the last one. A failure storm is then
one message per interval, not one per failed job.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from ..logs import OutageLogger
from ..text import plural
from .base import Notifier, is_retryable

log = logging.getLogger(__name__)

SEND_TRIES = 2  # one retry rides out a brief 5xx or reset; an outage is not worth waiting out
RETRY_BACKOFF_S = 1.0  # pause before the retry
MAX_KEYS = 10_000  # de-dup keys remembered; the oldest are forgotten first
FLUSH_EVERY_S = 1.0  # how often the sender thread looks for held-back repeats to sum up
_STOP = object()


@dataclass
class _Held:
    """One key's window: when it opened, and the repeats held back since (the last one)."""

    since: float
    count: int = 0
    last: tuple[str, str, str, dict[str, Any]] = ("", "", "", field(default_factory=dict))


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


class AsyncSender:
    """Delivers messages through ``notifier`` on a daemon thread (create it in the master,
    after forking workers; a forked child does not inherit the thread)."""

    def __init__(self, notifier: Notifier, *, repeat_interval: float = 600,
                 max_queue: int = 1000, retry_backoff: float = RETRY_BACKOFF_S) -> None:
        self.notifier = notifier
        self.repeat_interval = repeat_interval
        self.max_queue = max_queue
        self.retry_backoff = retry_backoff
        self.sent = self.failed = self.dropped = self.suppressed = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending = 0
        self._seen: dict[str, _Held] = {}
        self._holding: set[str] = set()  # keys with repeats held back
        self._lock = threading.Lock()
        self._closed = False
        self._abandon = threading.Event()  # set when close() timed out: drop what is left
        self._outage = OutageLogger(log)
        self._name = f"notifier {type(notifier).__name__}"
        self._thread = threading.Thread(target=self._run, name="ssjobs-notify", daemon=True)
        self._thread.start()

    def submit(self, title: str, text: str, level: str = "error", key: str | None = None,
               *, dedup: bool = True, **fields: Any) -> bool:
        """Queue one message; False when it was suppressed as a repeat, dropped or closed.

        The same ``key`` (default: title + text) goes out at most once per
        ``repeat_interval``; the repeats held back meanwhile are summed up in one message when
        the interval ends. ``dedup=False`` skips that (for callers that rate-limit themselves:
        job alerts).
        """
        key = f"{title}\n{text}" if key is None else key
        now = time.monotonic()
        with self._lock:
            if not dedup:
                return self._enqueue_locked(title, text, level, fields)
            seen = self._seen.get(key)
            if seen is not None and now - seen.since < self.repeat_interval:
                seen.count += 1
                seen.last = (title, text, level, fields)
                self._holding.add(key)
                self.suppressed += 1
                return False
            if self._closed or self._pending >= self.max_queue:
                self.dropped += 1
                return False
            if seen is not None and seen.count:  # not summed up yet: say it here
                text += (f"\n\n(suppressed {plural(seen.count, 'similar message')} in the "
                         f"last {_seconds(now - seen.since)} s)")
            self._seen.pop(key, None)
            self._holding.discard(key)
            self._seen[key] = _Held(now)
            if len(self._seen) > MAX_KEYS:
                for old in list(islice(self._seen, len(self._seen) - MAX_KEYS)):
                    del self._seen[old]
                    self._holding.discard(old)
            return self._enqueue_locked(title, text, level, fields)

    def _enqueue_locked(self, title: str, text: str, level: str, fields: dict[str, Any]) -> bool:
        if self._closed or self._pending >= self.max_queue:
            self.dropped += 1
            return False
        self._pending += 1
        self._queue.put((title, text, level, fields))
        return True

    def close(self, timeout: float = 5.0) -> bool:
        """Send what is queued, waiting at most ``timeout`` seconds; True when all was sent
        (or failed) in time. Later submits are dropped."""
        with self._lock:
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return True
        self._abandon.set()
        log.warning("%s: %d notifications still queued at close were dropped",
                    self._name, self._pending)
        return False

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=FLUSH_EVERY_S)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                with self._lock:
                    self._pending -= 1
                if self._abandon.is_set():
                    self.dropped += 1
                    continue
                self._deliver(*item)
            for summary in self._summaries(time.monotonic()):
                self._deliver(*summary)
        for summary in self._summaries(time.monotonic(), final=True):  # close(): none lost
            if not self._abandon.is_set():
                self._deliver(*summary)

    def _summaries(self, now: float, final: bool = False) -> list[tuple]:
        """One message per key whose window ended with repeats held back; it opens the
        key's next window (so a storm is one message per repeat_interval)."""
        out = []
        with self._lock:
            for key in list(self._holding):
                held = self._seen.get(key)
                if held is None or not held.count:
                    self._holding.discard(key)
                    continue
                if not final and now - held.since < self.repeat_interval:
                    continue
                title, text, level, fields = held.last
                out.append((title, f"{plural(held.count, 'more message')} like this in the "
                            f"last {_seconds(now - held.since)} s; the last one:\n\n{text}",
                            level, fields))
                self._seen[key] = _Held(now)
                self._holding.discard(key)
        return out

    def _deliver(self, title: str, text: str, level: str, fields: dict[str, Any]) -> None:
        for attempt in range(1, SEND_TRIES + 1):
            try:
                self.notifier.send(title, text, level, **fields)
            except Exception as e:  # noqa: BLE001 - a notifier must never break its caller
                retry = attempt < SEND_TRIES and is_retryable(e)
                if retry and not self._abandon.wait(self.retry_backoff * attempt):
                    continue
                self.failed += 1
                log.debug("%s: notification %r not sent: %s", self._name, title, e)
                self._outage.note_failure(self._name, e)
                return
            self.sent += 1
            self._outage.note_success(self._name)
            return
