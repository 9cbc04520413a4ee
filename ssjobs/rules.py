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


def is_spec(v: str) -> bool:
    """True for "module.path:attr" made of Python identifiers."""
    module, sep, attr = v.partition(":")
    return bool(sep) and all(n.isidentifier() and not keyword.iskeyword(n)
                             for n in [*module.split("."), attr])


def spec_rule(what: str, *names: str) -> Rule:
    """A "module:attr" spec, or one of ``names``."""
    return Rule("", lambda v: None if v in names or is_spec(v) else
                f"must be {what}, got {show(v)}")
