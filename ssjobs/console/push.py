"""``ssjobs push TOPIC [JSON] [--delay S] [--count]``: enqueue jobs from the shell.

The payload is the JSON argument, or one JSON document per line of stdin (blank lines are
skipped). Every line is parsed and encoded before anything is sent, so a bad line (named by
its number) or a topic missing from the config pushes nothing.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from .. import envelope
from ..errors import ControlError
from ..producer import Producer
from . import common

STDIN = "-"   # the JSON argument that means "read stdin", like an absent one


def parse_lines(lines: Iterable[str]) -> list[Any]:
    """One payload per non-blank line; the first bad line raises ControlError naming it."""
    payloads = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            payloads.append(_parse(line, f"line {number}"))
    return payloads


def _parse(text: str, where: str) -> Any:
    try:
        payload = json.loads(text)
    except ValueError as exc:
        msg = getattr(exc, "msg", str(exc))
        col = getattr(exc, "colno", None)
        raise ControlError(f"{where}: invalid JSON: {msg}"
                           + (f" (column {col})" if col else "")) from None
    try:
        size = len(envelope.encode_payload(payload))
    except TypeError as exc:
        raise ControlError(f"{where}: {exc}") from None
    if size > envelope.DEFAULT_MAX_PAYLOAD_BYTES:
        raise ControlError(f"{where}: payload is {size} bytes encoded, over the limit of "
                           f"{envelope.DEFAULT_MAX_PAYLOAD_BYTES}")
    return payload


def read_payloads(arg: str | None, stdin: TextIO) -> list[Any]:
    if arg is not None and arg != STDIN:
        return [_parse(arg, "argument")]
    if stdin.isatty():
        print("reading jobs from stdin, one JSON per line (Ctrl-D to end)", file=sys.stderr,
              flush=True)
    return parse_lines(stdin)


def push(cfg_path: str | os.PathLike, topic: str, payload: str | None, *, delay: float = 0.0,
         priority: int = 0, unique_key: str | None = None, count: bool = False,
         stdin: TextIO | None = None) -> int:
    """Push the jobs; print their ids (or, with ``count``, how many). Returns the exit status."""
    cfg = common.load(cfg_path)
    job = common.job_of(cfg, topic)
    payloads = read_payloads(payload, stdin if stdin is not None else sys.stdin)
    if not payloads:
        raise ControlError("no jobs to push: stdin had no JSON lines")
    if unique_key is not None and len(payloads) != 1:
        raise ControlError(f"--unique-key pushes one job, got {len(payloads)} lines")
    rcfg = cfg.redis_for(job)
    with common.redis_errors(rcfg), Producer(rcfg.url, prefix=rcfg.prefix) as producer:
        try:
            if unique_key is None:
                ids = producer.push_many(topic, payloads, delay=delay, priority=priority)
            else:
                job_id, pushed = producer.push_unique(topic, payloads[0], unique_key,
                                                      delay=delay, priority=priority)
                ids = [job_id] if pushed or not count else []
                if not pushed:
                    print(f"unique key {unique_key!r} is held by job {job_id}: nothing "
                          "pushed", file=sys.stderr)
        except ValueError as exc:
            raise ControlError(str(exc)) from None
    if count:
        later = f", due in {delay:g}s" if delay else ""
        print(f"pushed {len(ids)} job{'s' if len(ids) != 1 else ''} to {topic!r}{later}")
    else:
        for job_id in ids:
            print(job_id)
    return 0
