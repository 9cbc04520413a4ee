"""``ssjobs dead list|show|retry|purge TOPIC``: the dead-letter list of a topic.

The list holds envelopes, newest first, each with ``headers["error"]`` = {reason, type,
message, traceback, failed_at, worker}. ``retry`` puts a job back in ready with its attempts
reset and a note in ``headers["history"]``; each job moves with one Lua script that removes
that exact entry and pushes its replacement, so two concurrent retries never duplicate a job.
Jobs dead-lettered as ``malformed`` were not envelopes to begin with and are not retried.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from .. import envelope
from ..broker import Broker
from ..config import RedisConfig
from ..errors import ControlError, EnvelopeError
from ..redact import redact
from ..text import when
from . import common

PAGE = 200                 # entries read per LRANGE while scanning (envelopes may be large)
DEFAULT_LIMIT = 20         # `dead list` rows without --limit
HISTORY_KEEP = 20          # history notes kept per envelope (a job retried forever stays small)
MESSAGE_WIDTH = 60         # error column of `dead list`
SHORT_ID_MIN = 8           # `dead list` shows ids cut to their last N characters (at least
                           # this many): ssjobs ids share a long time prefix


class Entry:
    """One dead-letter list entry: the raw bytes and, when they decode, the job."""

    __slots__ = ("raw", "job", "problem")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.job: envelope.Job | None = None
        self.problem = ""
        try:
            self.job = envelope.decode(raw)
        except EnvelopeError as exc:
            self.problem = str(exc)

    @property
    def id(self) -> str:
        return self.job.id if self.job else "?"

    @property
    def error(self) -> dict:
        err = self.job.headers.get("error") if self.job else None
        if isinstance(err, dict):
            return err
        return {"reason": "unreadable", "type": "EnvelopeError", "message": self.problem}

    @property
    def malformed(self) -> bool:
        return self.job is None or self.error.get("reason") == "malformed"

    def summary(self) -> dict:
        err = self.error
        return {"id": self.id, "attempts": self.job.attempts if self.job else None,
                "reason": err.get("reason"), "type": err.get("type"),
                "message": common.first_line(err.get("message") or ""),
                "failed_at": err.get("failed_at"), "worker": err.get("worker"),
                "enqueued_at": self.job.enqueued_at if self.job else None}


def scan(broker: Broker) -> Iterator[Entry]:
    """Every entry, newest first, a page at a time (for reading, not while removing)."""
    start = 0
    while True:
        page = broker.dead_range(start, start + PAGE - 1)
        for raw in page:
            yield Entry(raw)
        if len(page) < PAGE:
            return
        start += PAGE


def find(broker: Broker, job_ids: list[str]) -> dict[str, Entry]:
    """The entries of ``job_ids``: a whole id, or any part of one that only one dead job
    has (the short ids `dead list` shows); ControlError names every id that matches no
    entry, or more than one."""
    wanted = list(dict.fromkeys(job_ids))
    found: dict[str, list[Entry]] = {i: [] for i in wanted}
    for entry in scan(broker):
        for want in wanted:
            if entry.job and want in entry.id and all(e.id != entry.id for e in found[want]):
                found[want].append(entry)
    for want, hits in found.items():
        exact = [e for e in hits if e.id == want]
        if exact:
            found[want] = exact[:1]
    missing = [i for i, hits in found.items() if not hits]
    if missing:
        raise ControlError(f"no dead job {', '.join(missing)} in {broker.keys.topic!r}")
    ambiguous = [i for i, hits in found.items() if len(hits) > 1]
    if ambiguous:
        raise ControlError(f"job id {', '.join(ambiguous)} matches more than one dead job in "
                           f"{broker.keys.topic!r}: give more of the id")
    return {i: hits[0] for i, hits in found.items()}


def short_ids(ids: list[str], least: int = SHORT_ID_MIN) -> list[str]:
    """The shortest common suffix length (at least ``least``) that keeps ``ids`` apart."""
    distinct = set(ids)
    for n in range(least, max((len(i) for i in ids), default=0) + 1):
        if len({i[-n:] for i in distinct}) == len(distinct):
            return [i[-n:] for i in ids]
    return list(ids)


def retried_envelope(entry: Entry, now: float) -> bytes:
    """The envelope to requeue: attempts 0, the error moved into ``headers["history"]``."""
    job = entry.job
    assert job is not None
    headers = dict(job.headers)
    err = headers.pop("error", None) or {}
    headers.pop("last_error", None)
    history = list(headers.get("history") or [])
    history.append({"event": "retried from dead", "at": now, "attempts": job.attempts,
                    "reason": err.get("reason"), "type": err.get("type"),
                    "message": common.first_line(err.get("message") or "", 200),
                    "failed_at": err.get("failed_at"), "worker": err.get("worker")})
    headers["history"] = history[-HISTORY_KEEP:]
    return envelope.encode(job.id, job.topic, job.payload, 0, job.enqueued_at, headers)


# -- the commands ----------------------------------------------------------------------------

def _open(cfg_path: str | os.PathLike, topic: str) -> tuple[Broker, RedisConfig]:
    cfg = common.load(cfg_path)
    job = common.job_of(cfg, topic)
    return common.broker_for(cfg, job), cfg.redis_for(job)


def list_dead(cfg_path: str | os.PathLike, topic: str, *, limit: int = DEFAULT_LIMIT,
              as_json: bool = False) -> int:
    broker, rcfg = _open(cfg_path, topic)
    with common.redis_errors(rcfg):
        total = broker.client.llen(broker.keys.dead)
        rows = [Entry(raw).summary() for raw in broker.dead_range(0, limit - 1)] if limit else []
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"no dead jobs in {topic!r}")
        return 0
    head = ["ID", "ATTEMPTS", "FAILED AT", "WORKER", "ERROR"]
    shown = short_ids([r["id"] for r in rows])
    table = [[sid, "-" if r["attempts"] is None else str(r["attempts"]),
              when(r["failed_at"]), str(r["worker"] or "-"),
              common.first_line(f"{r['type']}: {r['message']}", MESSAGE_WIDTH)]
             for sid, r in zip(shown, rows, strict=True)]
    widths = [max(len(row[i]) for row in [head, *table]) for i in range(len(head) - 1)]
    for row in [head, *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
              + "  " + row[-1])
    if total > len(rows):
        print(f"({len(rows)} newest of {total}; --limit N for more)")
    if shown != [r["id"] for r in rows]:
        print(f"(ids shortened: `ssjobs dead show {topic} ID` takes any part of an id that "
              "is unique; --json for whole ids)")
    return 0


def show(cfg_path: str | os.PathLike, topic: str, job_id: str) -> int:
    broker, rcfg = _open(cfg_path, topic)
    with common.redis_errors(rcfg):
        entry = find(broker, [job_id])[job_id]
    job, err = entry.job, entry.error
    assert job is not None
    fields = [("id", job.id), ("topic", job.topic), ("attempts", job.attempts),
              ("enqueued at", when(job.enqueued_at)), ("reason", err.get("reason")),
              ("failed at", when(err.get("failed_at"))), ("worker", err.get("worker")),
              ("error", redact(f"{err.get('type')}: {err.get('message')}"))]
    for name, value in fields:
        print(f"{name + ':':<13}" + str(value).rstrip().replace("\n", "\n" + " " * 13))
    for note in job.headers.get("history") or []:
        print(f"{'history:':<13}{when(note.get('at'))} {note.get('event')} after "
              f"{note.get('attempts')} attempts "
              + redact(f"({note.get('type')}: {note.get('message')})"))
    print("payload:")
    print(payload_text(job.payload))
    print("traceback:")
    print(redact(err.get("traceback") or "(none recorded)").rstrip())
    return 0


def payload_text(payload: Any) -> str:
    """A payload as `dead show` (and the web dashboard) print it: indented JSON, else repr."""
    try:
        return json.dumps(payload, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(payload)


def requeue(broker: Broker, job_ids: list[str] | None = None) -> dict[str, int]:
    """Requeue the given jobs (all must be dead: else ControlError, nothing moved), or every
    dead job, oldest first. Returns how many were ``requeued``, already ``gone`` (retried or
    purged meanwhile) and ``skipped`` (malformed). Redis errors propagate."""
    outcome = {"requeued": 0, "gone": 0, "skipped": 0}
    entries = find(broker, job_ids).values() if job_ids else _oldest_first(broker, outcome)
    for entry in entries:
        if entry.malformed:
            outcome["skipped"] += 1
        elif broker.dead_requeue(entry.raw, retried_envelope(entry, time.time())):
            outcome["requeued"] += 1
        else:
            outcome["gone"] += 1
    return outcome


def retry(cfg_path: str | os.PathLike, topic: str, job_ids: list[str] | None = None) -> int:
    """Requeue the given jobs (all must be dead), or every dead job, oldest first."""
    broker, rcfg = _open(cfg_path, topic)
    with common.redis_errors(rcfg):
        outcome = requeue(broker, job_ids)
    requeued, gone, skipped = outcome["requeued"], outcome["gone"], outcome["skipped"]
    print(f"requeued {requeued} job{'s' if requeued != 1 else ''} to {topic!r}")
    if gone:
        print(f"{gone} already gone (retried or purged meanwhile)")
    if skipped:
        print(f"skipped {skipped} malformed (not a job envelope: see `ssjobs dead show`)")
    if job_ids and skipped:
        return 1
    return 0


def _oldest_first(broker: Broker, outcome: dict[str, int]) -> Iterator[Entry]:
    """The entries dead now, oldest first, read from the tail while the caller removes them:
    what it skips stays at the tail, so the next page starts past the skipped ones. Jobs that
    die again meanwhile are pushed at the head and not reached (never retried twice)."""
    remaining = int(broker.client.llen(broker.keys.dead))
    while remaining > 0:
        skipped = outcome["skipped"]
        page = broker.dead_range(-skipped - min(PAGE, remaining), -skipped - 1)
        if not page:
            return
        for raw in reversed(page):
            remaining -= 1
            yield Entry(raw)


def purge(cfg_path: str | os.PathLike, topic: str, *, yes: bool = False) -> int:
    """Delete every dead job (those present when asked). Without ``yes`` it asks when stdin
    is a terminal, and refuses otherwise."""
    broker, rcfg = _open(cfg_path, topic)
    with common.redis_errors(rcfg):
        count = int(broker.client.llen(broker.keys.dead))
    if not count:
        print(f"no dead jobs in {topic!r}")
        return 0
    if not yes:
        if not sys.stdin.isatty():
            raise ControlError(f"refusing to delete {count} dead jobs of {topic!r} without "
                               "--yes (stdin is not a terminal)")
        try:
            answer = input(f"delete {count} dead job{'s' if count != 1 else ''} of "
                           f"{topic!r}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    with common.redis_errors(rcfg):
        deleted = broker.dead_drop_oldest(count)
    print(f"deleted {deleted} dead job{'s' if deleted != 1 else ''} of {topic!r}")
    return 0
