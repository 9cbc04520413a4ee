"""The one rule for delays (``push(delay=…)`` and ``Retry(delay=…)``): a delay is a finite
number of seconds; negative means now; a year at most (docs/design.md, "Odd values")."""
from __future__ import annotations

import math
from typing import Any

MAX_DELAY_S = 366 * 24 * 3600.0   # longer than any sensible schedule; beyond it is a bug


def _seconds(delay: Any, what: str) -> float:
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise ValueError(f"{what} must be a number of seconds, got {type(delay).__name__}")
    delay = float(delay)
    if math.isnan(delay):
        raise ValueError(f"{what} must be a number of seconds, got nan")
    return max(delay, 0.0)


def push_delay(delay: Any) -> float:
    """A push's delay in seconds (0.0: now); ValueError for NaN, infinity, over a year."""
    seconds = _seconds(delay, "delay")
    if seconds > MAX_DELAY_S:
        raise ValueError(f"delay must be at most {MAX_DELAY_S:.0f} seconds (a year), "
                         f"got {delay!r}")
    return seconds


def retry_delay(delay: Any) -> float:
    """A Retry's delay: clamped to 0 .. a year (so infinity waits a year); ValueError for NaN
    or a non-number."""
    return min(_seconds(delay, "Retry delay"), MAX_DELAY_S)
