"""Small wording helpers shared by messages."""
from __future__ import annotations

import time


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 job``, ``2 jobs``, ``0 jobs`` (``nouns``: an irregular plural)."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def when(epoch: float | None) -> str:
    """Local time, to the second, or '-'."""
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(epoch)))


def age(since: float | None, now: float) -> str:
    """How long since ``since`` (epoch seconds), compact: 4.2s 42s 3m05s 2h03m 1d02h; '-'."""
    if not since:
        return "-"
    s = max(0.0, now - float(since))
    if s < 10:
        return f"{s:.1f}s"
    n = int(s)
    if n < 60:
        return f"{n}s"
    if n < 3600:
        return f"{n // 60}m{n % 60:02d}s"
    if n < 86400:
        return f"{n // 3600}h{n % 3600 // 60:02d}m"
    return f"{n // 86400}d{n % 86400 // 3600:02d}h"


def milliseconds(v: float | None) -> str:
    """A duration given in ms: 0.42ms 12ms 1.50s; '-'."""
    if v is None:
        return "-"
    v = float(v)
    if v >= 1000:
        return f"{v / 1000:.2f}s"
    return f"{v:.2f}ms" if v < 10 else f"{v:.0f}ms"


def size(v: int | float | None) -> str:
    """Bytes, compact: 512B 9.5KB 21MB 1.2GB; '-' for nothing."""
    if not v:
        return "-"
    n = float(v)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            if unit == "B":
                return f"{n:.0f}B"
            return f"{n:.1f}{unit}" if n < 10 else f"{n:.0f}{unit}"
        n /= 1024
    return str(v)
