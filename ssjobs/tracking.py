"""Tracked jobs (``[[jobs]] track = true``): each job's record — state, attempts, times,
result, error, progress — kept in the topic's slot (``P:{T}:job:ID``, a HASH) and written by
the scripts the worker already runs (push, take, settle, recover), so tracking costs no
extra round trip per batch; only ``job.progress(...)`` and ``job.cancelled`` talk to Redis on
their own, rate-limited. Records expire ``result_ttl`` after the job finished.

States: queued, delayed, running, retrying, succeeded, dead, cancelled.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any

import msgpack

from .broker import TopicKeys, translate, with_lib

STATES = ("queued", "delayed", "running", "retrying", "succeeded", "dead", "cancelled")
FINISHED = ("succeeded", "dead", "cancelled")
RESULT_MAX_BYTES = 64 * 1024     # a bigger result is not stored: the record says why
PROGRESS_EVERY_S = 0.5           # a chatty consumer writes its progress at most this often
CANCEL_CHECK_EVERY_S = 1.0       # job.cancelled asks Redis at most this often
CANCEL_SCRIPT = _CANCEL = with_lib("cancel")
_PROGRESS = with_lib("progress")


def read(client: Any, keys: TopicKeys, job_id: str) -> dict | None:
    """The record of a tracked job, or None when unknown or expired."""
    with translate():
        return parse(keys, job_id, client.hgetall(keys.record(job_id)))


def parse(keys: TopicKeys, job_id: str, found: dict) -> dict | None:
    """A record as ``Producer.status`` returns it (docs/reference.md, "Tracked jobs")."""
    if not found:
        return None
    raw = {k.decode(): v for k, v in found.items()}
    text = {k: v.decode(errors="replace") for k, v in raw.items() if k != "result"}
    result = None
    if "result" in raw:
        try:
            result = msgpack.unpackb(raw["result"], raw=False)
        except Exception:  # noqa: BLE001 - a record another program wrote: show its bytes
            result = raw["result"]
    return {"id": job_id, "topic": keys.topic, "state": text.get("state"),
            "attempts": int(text.get("attempts") or 0),
            "enqueued_at": _number(text.get("enqueued_at")),
            "started_at": _number(text.get("started_at")),
            "finished_at": _number(text.get("finished_at")),
            "result": result, "result_error": text.get("result_error"),
            "error": _json(text.get("error")), "progress": _json(text.get("progress")),
            "cancel_requested": text.get("cancel") == "1"}


def cancel(client: Any, keys: TopicKeys, job_id: str) -> str | None:
    """Cancel a tracked job: one not yet started never runs; a running one sees
    ``job.cancelled``; a finished one is left alone. Returns the state it found, or None
    when the job is unknown."""
    with translate():
        return found_state(client.register_script(_CANCEL)(**cancel_call(keys, job_id)))


def cancel_call(keys: TopicKeys, job_id: str) -> dict[str, list]:
    return {"keys": [keys.record(job_id), keys.cancels],
            "args": [job_id, time.time()]}


def found_state(reply: Any) -> str | None:
    state = reply.decode() if isinstance(reply, bytes) else reply
    return state or None


def encode_result(result: Any) -> tuple[bytes, str]:
    """(msgpack of a consumer's return value, or b"" with the reason it is not stored)."""
    if result is None:
        return b"", ""
    try:
        data = msgpack.packb(result, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        return b"", f"the result is not msgpack-serialisable: {exc}"
    if len(data) > RESULT_MAX_BYTES:
        return b"", f"the result is {len(data)} bytes, over the {RESULT_MAX_BYTES} kept"
    return data, ""


def error_text(exc_type: str, message: str) -> str:
    return json.dumps({"type": exc_type, "message": message[:2000]})


class Tracker:
    """In a worker of a tracked topic: what ``job.progress()`` and ``job.cancelled`` do."""

    def __init__(self, client: Any, keys: TopicKeys) -> None:
        self.keys = keys
        self.script = client.register_script(_PROGRESS)
        self._written: dict[str, float] = {}     # job id -> when its progress was written
        self._asked: dict[str, tuple[float, bool]] = {}  # job id -> (when, cancelled)

    def progress(self, job_id: str, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self._written.get(job_id, -math.inf) < PROGRESS_EVERY_S and fraction < 1:
            return
        self._written = {job_id: now}   # only the running job matters
        value = json.dumps({"fraction": fraction, "message": message[:500], "at": time.time()})
        self._ask(job_id, value, now)

    def cancelled(self, job_id: str) -> bool:
        now = time.monotonic()
        when, answer = self._asked.get(job_id, (-math.inf, False))
        if now - when >= CANCEL_CHECK_EVERY_S:
            answer = self._ask(job_id, "", now)
        return answer

    def _ask(self, job_id: str, progress: str, now: float) -> bool:
        try:
            with translate():
                answer = bool(self.script(keys=[self.keys.record(job_id)], args=[progress]))
        except Exception:  # noqa: BLE001 - progress is best effort: the job goes on
            return self._asked.get(job_id, (0.0, False))[1]
        self._asked = {job_id: (now, answer)}
        return answer


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
