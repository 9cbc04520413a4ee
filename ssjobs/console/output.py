"""How every console command speaks: one line on stdout, or one error line (plus a hint) on
stderr, never a traceback, secrets masked (``ssjobs.redact``).

A low layer (it imports only ``redact`` and ``errors``): ``control``, ``checks`` and the
console commands all print through it."""
from __future__ import annotations

import sys

from ..errors import ConfigError
from ..redact import redact


def say(message: str) -> None:
    """One line (or block) on stdout, secrets masked."""
    print(redact(message), flush=True)


def fail(message: str, hint: str | None = None) -> None:
    """One error line on stderr (and an optional hint line), secrets masked."""
    print(f"ssjobs: {redact(message)}", file=sys.stderr, flush=True)
    if hint:
        print(f"hint: {redact(hint)}", file=sys.stderr, flush=True)


def config_error_lines(exc: ConfigError) -> list[str]:
    """One line per problem, each naming the file: ``/etc/jobs.toml: jobs[0].topic: ...``."""
    where = f"{exc.path}: " if exc.path else ""
    return [f"{where}{e}" for e in exc.errors]


def report_config_error(exc: ConfigError) -> None:
    for line in config_error_lines(exc):
        fail(line)
