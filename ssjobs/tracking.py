"""Tracked jobs (``[[jobs]] track = true``): each job's record — state, attempts, times,
result, error, progress — kept in the topic's slot and written by the scripts the worker
already runs (push, settle, recover), so tracking costs no extra round trip per batch; only
``job.progress(...)`` and ``job.cancelled`` talk to Redis on their own, rate-limited.
Records expire ``result_ttl`` after the job finished. Where records live and why:
docs/protocol.md, "Job records".

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
CANCEL_SCRIPT = with_lib("cancel")
STATUS_SCRIPT = with_lib("status")
_PROGRESS = with_lib("progress")
_HANDOVER = with_lib("handover")
_packb = msgpack.Packer(use_bin_type=True).pack
_pack_raw = msgpack.Packer(use_bin_type=False).pack
_ENQUEUED = _packb("enqueued_at")   # a key of a plain success's map (Records.successes)


def read(client: Any, keys: TopicKeys, job_id: str) -> dict | None:
    """The record of a tracked job, or None when unknown or expired."""
    with translate():
        return parse(keys, job_id, client.register_script(STATUS_SCRIPT)(
            **status_call(keys, job_id)))


def status_call(keys: TopicKeys, job_id: str) -> dict[str, list]:
    return {"keys": [keys.workers], "args": [job_id]}


def parse(keys: TopicKeys, job_id: str, reply: list) -> dict | None:
    """status.lua's reply as ``Producer.status`` returns it (docs/reference.md, "Tracked
    jobs")."""
    if not reply:
        return None
    state_bytes, _, rest = reply[0].partition(b" ")
    expires_at, _, packed = rest.partition(b" ")
    state = state_bytes.decode(errors="replace")
    try:
        fields = msgpack.unpackb(packed, raw=False)
    except Exception:  # noqa: BLE001 - a record another program wrote: show what is sure
        fields = {}
    if not isinstance(fields, dict):
        fields = {}
    if state in FINISHED and number(expires_at.decode(errors="replace"), math.inf) \
            <= time.time():
        return None   # expired: the settle step deletes it soon
    out = {"id": job_id, "topic": keys.topic, "state": state,
           "attempts": int(number(fields.get("attempts"), 0)),
           "enqueued_at": number(fields.get("enqueued_at")),
           "started_at": number(fields.get("started_at")),
           "finished_at": number(fields.get("finished_at")),
           "result": None, "result_error": fields.get("result_error") or None,
           "error": fields.get("error") or None, "progress": json_value(fields.get("progress")),
           "cancel_requested": False}
    if "result" in fields:
        try:
            out["result"] = msgpack.unpackb(fields["result"], raw=False)
        except Exception:  # noqa: BLE001 - not ours: show its bytes
            out["result"] = fields["result"]
    if len(reply) > 1:   # not finished: held by a worker, progress, cancel asked
        held, attempts, taken_at, progress, cancel = reply[1:6]
        if int(held) and taken_at:   # held, and its worker noted taking it: it runs
            out.update(state="running", attempts=int(attempts),
                       started_at=number(_text(taken_at)))
        if progress:
            out["progress"] = json_value(_text(progress))
        out["cancel_requested"] = bool(int(cancel))
    return out


def cancel(client: Any, keys: TopicKeys, job_id: str) -> str | None:
    """Cancel a tracked job: one not yet started never runs; a running one sees
    ``job.cancelled``; a finished one is left alone. Returns the state it found, or None
    when the job is unknown."""
    with translate():
        return found_state(client.register_script(CANCEL_SCRIPT)(**cancel_call(keys, job_id)))


def cancel_call(keys: TopicKeys, job_id: str) -> dict[str, list]:
    return {"keys": [keys.workers, keys.cancels], "args": [job_id, time.time()]}


def found_state(reply: Any) -> str | None:
    state = reply.decode() if isinstance(reply, bytes) else reply
    return state or None


def encode_result(result: Any) -> tuple[bytes, str]:
    """(msgpack of a consumer's return value, or b"" with the reason it is not stored)."""
    if result is None:
        return b"", ""
    try:
        data = _packb(result)
    except (TypeError, ValueError, OverflowError) as exc:
        return b"", f"the result is not msgpack-serialisable: {exc}"
    if len(data) > RESULT_MAX_BYTES:
        return b"", f"the result is {len(data)} bytes, over the {RESULT_MAX_BYTES} kept"
    return data, ""


def error_of(exc_type: str, message: str) -> dict:
    return {"type": exc_type, "message": message[:2000]}


def record(state: str, fields: dict, expires_at: int = 0) -> bytes:
    """A record as the scripts store it: "<state> <expires_at> <msgpack map of the rest>"
    (expires_at 0 while the job is not finished)."""
    return b"%s %d %s" % (state.encode(), expires_at, _packb(fields))


class Records:
    """The records of the tracked jobs one settle reports, built by the worker so that the
    settle only stores them: ``records`` and ``expiry`` are the two arguments settle.lua
    takes. What every job of the batch shares (its times) is encoded once: a plain success
    costs two small packs."""

    def __init__(self, began: float, now: float, ttl: float) -> None:
        self._pairs: list[str | bytes] = []   # job id, record, job id, record ...
        self._ended: list[str] = []
        self.expires_at = math.ceil(now + ttl)
        self._times = {"started_at": began, "finished_at": now}
        self._tail = b"".join(_packb(k) + _packb(v) for k, v in self._times.items())
        self._succeeded = b"succeeded %d \x84%s" % (self.expires_at, _packb("attempts"))

    @property
    def records(self) -> bytes:
        """The records as one msgpack array (job id, record, ...) of raw strings, which is
        what cmsgpack reads (it knows no bin type); b"" for none."""
        return _pack_raw(self._pairs) if self._pairs else b""

    @property
    def expiry(self) -> bytes:
        """The expiry entry of the jobs that ended: "<expires_at> <msgpack array of ids>"
        (ids may be any string; cmsgpack reads no bin type, so raw strings)."""
        return b"%d %s" % (self.expires_at, _pack_raw(self._ended)) if self._ended else b""

    def successes(self, done: list, latest: tuple[str, dict] | None) -> None:
        """The jobs of ``done`` (job, result) succeeded; ``latest``: (job id, progress) of
        the last progress reported, if any."""
        out, ended, head, tail, pack = (self._pairs, self._ended, self._succeeded,
                                        self._tail, _packb)
        for job, result in done:
            progress = latest[1] if latest is not None and latest[0] == job.id else None
            if result is None and progress is None:
                out += (job.id, b"".join((head, pack(job.attempts), _ENQUEUED,
                                          pack(job.enqueued_at), tail)))
                ended.append(job.id)
            else:
                self.ended("succeeded", job.id, job.attempts, job.enqueued_at, result, progress)

    def ended(self, state: str, job_id: str, attempts: int, enqueued_at: float, result: Any,
              progress: dict | None) -> None:
        """A job that succeeded (or was cancelled) returning ``result``."""
        fields: dict[str, Any] = {"attempts": attempts, "enqueued_at": enqueued_at}
        data, why = encode_result(result)
        if data:
            fields["result"] = data
        if why:
            fields["result_error"] = why
        self.add(state, fields, job_id, progress)

    def add(self, state: str, fields: dict, job_id: str, progress: dict | None) -> None:
        """A job that ended ``state`` (or is ``retrying``) with ``fields`` (attempts,
        enqueued_at, result, error ...) and its last progress."""
        if progress:
            fields["progress"] = progress
        if state == "retrying":
            fields["started_at"] = self._times["started_at"]
            self._pairs += (job_id, record(state, fields))
        else:
            self._pairs += (job_id, record(state, {**fields, **self._times}, self.expires_at))
            self._ended.append(job_id)


class Tracker:
    """In a worker of a tracked topic: what ``job.progress()`` and ``job.cancelled`` do."""

    def __init__(self, client: Any, keys: TopicKeys) -> None:
        self.keys = keys
        self.script = client.register_script(_PROGRESS)
        self._handover = client.register_script(_HANDOVER)
        self._written: dict[str, float] = {}     # job id -> when its progress was written
        self._asked: dict[str, tuple[float, bool]] = {}  # job id -> (when, cancelled)
        self.latest: tuple[str, dict] | None = None      # (job id, its last progress)

    def progress(self, job_id: str, fraction: float, message: str) -> None:
        now = time.monotonic()
        value = {"fraction": fraction, "message": message[:500], "at": time.time()}
        self.latest = (job_id, value)   # the job's record keeps it, throttled or not
        if now - self._written.get(job_id, -math.inf) < PROGRESS_EVERY_S and fraction < 1:
            return
        self._written = {job_id: now}   # only the running job matters
        self._ask(job_id, json.dumps(value), now)

    def handed_over(self, worker: str, job_id: str) -> bool:
        """The idle wait gave ``worker`` this job: note when (its started_at while it runs)
        and say whether it was cancelled before it ran (False when Redis cannot say: the
        job runs, and its consumer may still see ``job.cancelled``)."""
        k = self.keys
        try:
            with translate():
                return bool(self._handover(keys=[k.taken, k.cancelling],
                                           args=[worker, time.time(), job_id]))
        except Exception:  # noqa: BLE001 - best effort, as progress is
            return False

    def progress_of(self, job_id: str) -> dict | None:
        """The last progress ``job_id`` reported, for its record."""
        return self.latest[1] if self.latest and self.latest[0] == job_id else None

    def cancelled(self, job_id: str) -> bool:
        now = time.monotonic()
        when, answer = self._asked.get(job_id, (-math.inf, False))
        if now - when >= CANCEL_CHECK_EVERY_S:
            answer = self._ask(job_id, "", now)
        return answer

    def _ask(self, job_id: str, progress: str, now: float) -> bool:
        k = self.keys
        try:
            with translate():
                answer = bool(self.script(keys=[k.jobs, k.progress, k.cancelling],
                                          args=[job_id, progress]))
        except Exception:  # noqa: BLE001 - progress is best effort: the job goes on
            return self._asked.get(job_id, (0.0, False))[1]
        self._asked = {job_id: (now, answer)}
        return answer


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def number(value: Any, default: Any = None) -> Any:
    try:
        return float(value) if value not in (None, "", b"") else default
    except (TypeError, ValueError):
        return default


def json_value(value: Any) -> Any:
    if not value or not isinstance(value, str):
        return value or None
    try:
        return json.loads(value)
    except ValueError:
        return value
