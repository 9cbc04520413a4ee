"""What a running master could not set up and keeps running without (the relay of
workers' ERROR lines, the metrics endpoint ...): each is logged once at ERROR where it
happens, and ``status`` shows it until it is fixed, from the master's status snapshot.

Layer 0: a registry of this process, ``{component: message}``.
"""
from __future__ import annotations

_current: dict[str, str] = {}


def report(component: str, message: str) -> None:
    _current[component] = message


def clear(component: str) -> None:
    _current.pop(component, None)


def current() -> dict[str, str]:
    return dict(_current)
