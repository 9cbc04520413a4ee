"""Pure decisions of the master: numbers in, numbers out (table-tested)."""
from __future__ import annotations

CRASH_BACKOFF_BASE_S = 0.5   # first delay after a quick crash
CRASH_BACKOFF_MAX_S = 30.0   # a crash-looping worker is retried at least this often
HEALTHY_LIFETIME_S = 10.0    # a worker that lived this long resets its topic's crash streak
CRASH_LOOP_AT = 3            # quick crashes in a row that make a crash loop (logged, alerted)
MASTER_TICK_S = 1.0          # the master decides (scales, heartbeats, ticks extensions) this often


def dynamic_target(backlog: int, health: int, current: int, maximum: int) -> int:
    """How many dynamic workers a topic wants started now (the master never adds more
    than this, and never stops running ones for it).

    Above ``health`` the pool ramps up one worker per check, or straight to the maximum
    when the backlog is over 10× healthy; at or below it, 0: none are added or replaced,
    and the running ones retire themselves after dynamic_idle_time.
    """
    if maximum <= 0 or health <= 0 or backlog <= health:
        return 0
    if backlog > 10 * health:
        return maximum
    return min(maximum, current + 1)


def crash_backoff(consecutive_crashes: int) -> float:
    """Seconds to wait before restarting a worker after its topic's N-th quick crash."""
    if consecutive_crashes <= 0:
        return 0.0
    return min(CRASH_BACKOFF_MAX_S, CRASH_BACKOFF_BASE_S * 2 ** (consecutive_crashes - 1))


def is_quick_crash(lifetime_s: float, clean_exit: bool, jobs_done: int) -> bool:
    """A crash that counts towards a crash loop: soon after start, before any job succeeded.
    (A job that crashes its worker again and again is caught by poison-job charging.)"""
    return not clean_exit and lifetime_s < HEALTHY_LIFETIME_S and jobs_done == 0
