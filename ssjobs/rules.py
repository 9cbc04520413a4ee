"""Rules of config values: a hint for the docs and a test giving an error message (None when
the value is fine). Declared next to each setting in ``ssjobs.config``.

Layer 0: imports nothing from ssjobs but ``urls`` (for ``show``)."""
from __future__ import annotations

import keyword
import re
from typing import Any, Callable, NamedTuple

from .urls import show


class Rule(NamedTuple):
    hint: str
    test: Callable[[Any], str | None]


def number(v: float) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else repr(v)


def between(lo: int, hi: int | None = None) -> Rule:
    if hi is None:
        return Rule(f">= {lo}", lambda v: None if v >= lo else f"must be >= {lo}, got {number(v)}")
    return Rule(f"{lo}..{hi}", lambda v: None if lo <= v <= hi
                else f"must be between {lo} and {hi}, got {number(v)}")


def one_of(*choices: str) -> Rule:
    return Rule(" | ".join(choices), lambda v: None if v in choices
                else f"must be one of {', '.join(choices)}, got {show(v)}")


def matches(pattern: str, what: str) -> Rule:
    return Rule("", lambda v: None if re.fullmatch(pattern, v)
                else f"must be {what}, got {show(v)}")


def parsed_by(hint: str, parse: Callable[[Any], object]) -> Rule:
    """A value ``parse`` accepts; the ValueError it raises is the problem."""
    def problem(v: Any) -> str | None:
        try:
            parse(v)
        except ValueError as exc:
            return str(exc)
        return None
    return Rule(hint, problem)


def is_spec(v: str) -> bool:
    """True for "module.path:attr" made of Python identifiers."""
    module, sep, attr = v.partition(":")
    return bool(sep) and all(n.isidentifier() and not keyword.iskeyword(n)
                             for n in [*module.split("."), attr])


def spec_rule(what: str, *names: str) -> Rule:
    """A "module:attr" spec, or one of ``names``."""
    return Rule("", lambda v: None if v in names or is_spec(v) else
                f"must be {what}, got {show(v)}")


# -- the log settings' vocabulary: checked in the config, used by ssjobs.logs ---------------

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
_SIZE_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_ROTATE_WHAT = '"", "daily" or a size like "100MB"'


def rotation(rotate: str) -> str | int | None:
    """``log.rotate``: ``""`` → None, ``"daily"`` → "daily", ``"100MB"`` → bytes;
    ValueError for anything else."""
    text = rotate.strip().upper()
    if text in ("", "DAILY"):
        return text.lower() or None
    match = re.fullmatch(r"(\d+)\s*([KMG]?B)?", text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"must be {_ROTATE_WHAT}, got {show(rotate)}")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").upper()]


ROTATE_RULE = parsed_by("", rotation)


# -- flow control and schedules -------------------------------------------------------------

_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def rate(text: str) -> tuple[int, float] | None:
    """``rate_limit``: ``"100/s"`` → (100, 1.0), ``"5/m"`` → (5, 60.0), ``""`` → None;
    ValueError for anything else."""
    if not text:
        return None
    match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([smh])\s*", text)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f'must be like "100/s", "5/m" or "20/h" (at least 1), got {show(text)}')
    return int(match.group(1)), _PERIODS[match.group(2)]


RATE_RULE = parsed_by('"N/s", "N/m" or "N/h"', rate)
CRON_NICKNAMES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
                  "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *",
                  "@annually": "0 0 1 1 *"}


def cron_problem(v: str) -> str | None:
    """Why ``v`` is not a 5-field cron expression or nickname (None when it is)."""
    if not v:
        return None
    import datetime

    from cronsim import CronSim, CronSimError

    expr = CRON_NICKNAMES.get(v.strip(), v)
    if len(expr.split()) != 5:   # cronsim would take a 6th field (seconds): not cron's
        return f"is not a cron expression (5 fields: minute hour day-of-month month " \
               f"day-of-week, or @hourly @daily @weekly @monthly), got {show(v)}"
    try:
        CronSim(expr, datetime.datetime(2000, 1, 1))
    except CronSimError as exc:
        return f"is not a cron expression ({exc}), got {show(v)}"
    return None


def zone_problem(v: str) -> str | None:
    """Why ``v`` is not an IANA time zone name (None when it is, or empty: local time)."""
    if not v:
        return None
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"is not a time zone this system knows (IANA names like \"Asia/Shanghai\"), " \
               f"got {show(v)}"
    return None
