"""Where a process of ssjobs may import from: never the current directory, never the
caller's ``PYTHONPATH``. The master starts as root, and whatever it imports before it drops
to ``process.user`` (setproctitle, redis, the notifier's http.client ...) runs as root: a
``setproctitle.py`` planted where an operator types ``ssjobs start`` must not be found.
Consumer code comes only from ``process.consumer_path`` (``ssjobs.loader``).

Two halves: every ssjobs that starts another ssjobs runs it with :data:`ISOLATED_FLAGS`,
and every entry point (``python -m ssjobs``, the console script, the one-file binary) calls
:func:`isolate` before it imports anything outside the standard library.

Layer 0: it imports nothing from ssjobs.
"""
from __future__ import annotations

import os
import site
import sys
import sysconfig

# `-I`: ignore PYTHON* variables and the user's site-packages, and put neither the
# script's directory nor the current directory on sys.path (Python 3.4+, unlike -P).
ISOLATED_FLAGS = ("-I",)


def isolate() -> list[str]:
    """Drop from ``sys.path`` every entry the caller controls: the current directory (``''``,
    relative entries, or the cwd spelled out) and what ``PYTHONPATH`` added; in the one-file
    binary, everything outside its bundle. Returns what was removed."""
    bundle = getattr(sys, "_MEIPASS", None) if getattr(sys, "frozen", False) else None
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:  # the cwd was removed: it cannot serve anything either
        cwd = None
    from_env = set()
    if not sys.flags.ignore_environment:
        from_env = {os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                    if p}
    keep_always = _installation_dirs()
    removed = []
    for entry in list(sys.path):
        if _untrusted(entry, bundle, cwd, from_env, keep_always):
            sys.path.remove(entry)
            removed.append(entry)
    return removed


def _untrusted(entry: str, bundle: str | None, cwd: str | None, from_env: set[str],
               keep_always: set[str]) -> bool:
    if bundle is not None:
        real = os.path.realpath(entry) if entry else ""
        return not (real == bundle or real.startswith(bundle.rstrip(os.sep) + os.sep))
    if not entry or not os.path.isabs(entry):
        return True
    real = os.path.realpath(entry)
    if real in keep_always:  # PYTHONPATH may name site-packages too: that one stays
        return False
    return real == cwd or real in from_env


def _installation_dirs() -> set[str]:
    """The standard library and site-packages of this Python: never removed."""
    dirs = set()
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            dirs.add(os.path.realpath(sysconfig.get_path(name)))
        except (KeyError, TypeError):
            pass
    try:
        dirs.update(os.path.realpath(p) for p in site.getsitepackages())
    except AttributeError:  # some virtualenv versions' site module lacks it
        pass
    return dirs
