"""Pure-Python twin of ``_fastloop.pyx``: the readable spec of the hot loop.

``run_batch`` runs the jobs of a fetched batch in order: it decodes each envelope, calls the
consumer, times it, and keeps the worker's scoreboard slot current, including the position
in the batch that crash recovery reads (docs/design.md, "Crashes"). It stops at the first
job that does not succeed, so the worker settles that failure before running the next job.
``assemble`` builds the envelopes of new jobs for a producer (the part of a push that is
the same for every job and the part that is not are given apart, so a batch costs little
more than encoding its payloads). Both twins expose the same names and behave the same.
"""
from __future__ import annotations

import struct
import time
import traceback
from typing import Any

from .envelope import ID_SEQ_MASK, NEW_ENVELOPE_HEAD, NUDGE, decode
from .errors import EnvelopeError, JobTimeout, Reject, Retry
from .outcome import Code, Failure
from .scoreboard import (
    BATCH_DONE,
    BUSY,
    BUSY_TOTAL,
    FAILED,
    HIST_OFF,
    JOB_ID_LEN,
    JOB_ID_OFF,
    JOB_STARTED_AT,
    JOB_TIMEOUT,
    PENDING_FAILURE,
    PROCESSED,
    STATE,
)
from .scoreboard import bucket_of as bucket  # the histogram bucket of a job's duration

IMPLEMENTATION = "pure"

_D = struct.Struct("<d")
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
_B = struct.Struct("<B")
_H = struct.Struct("<H")

_forked = False


def mark_forked() -> None:
    """In a process forked by consumer code: the loop must not record or run anything more
    (the worker's at-fork hook calls this in the child)."""
    global _forked
    _forked = True


def assemble(prefix: str, first: int, middle: bytes,
             bodies: list[bytes]) -> tuple[list[str], list[bytes]]:
    """The ids and envelopes of new jobs (envelope.id_block gives ``prefix`` and ``first``,
    envelope.new_envelope_middle the ``middle``; ``bodies`` are the encoded payloads)."""
    head = NEW_ENVELOPE_HEAD + prefix.encode()
    seqs = [b"%010x" % ((first + i) & ID_SEQ_MASK) for i in range(len(bodies))]
    envelopes = [b"%s%s%s%s" % (head, seq, middle, body)
                 for seq, body in zip(seqs, bodies, strict=True)]
    return [prefix + seq.decode() for seq in seqs], envelopes


def run_batch(raws: list[bytes], call: Any, finish: Any, buf: Any, offset: int, ctl: Any,
              max_bytes: int, done: list | None = None,
              track: bool = False) -> tuple[int, Failure | None]:
    """Run ``raws`` in order until one does not succeed or the worker stops.

    ``call(job)`` is the consumer; what it returns, if awaitable (an ``async def`` consumer),
    ``finish(awaitable)`` runs to its end; ``buf``/``offset`` locate the worker's slot;
    ``ctl.stopping`` is checked before each job; envelopes over ``max_bytes`` are not decoded.
    Returns ``(end, failure)``: the jobs before ``end`` were run (or refused) and only the last
    of them can have failed, then ``failure`` describes it; ``end < len(raws)`` without a
    failure means the worker is stopping. Each success adds one to the slot's BATCH_DONE; a
    failure sets PENDING_FAILURE until the worker has settled it. ``done`` (a list) gets
    ``(job, result)`` of each success that has headers (a unique key to release), or of
    every success with ``track``. A job's own ``timeout`` header goes into the slot (0.0:
    the topic's job_timeout). The wake-up token of a priority push (NUDGE) is skipped.
    """
    n = len(raws)
    _B.pack_into(buf, offset + STATE[0], BUSY)
    for i in range(n):
        if ctl.stopping:
            return i, None
        raw = raws[i]
        if len(raw) > max_bytes:
            _H.pack_into(buf, offset + PENDING_FAILURE[0], 1)
            return i + 1, Failure(raw, None, Code.TOO_LARGE, None, "")
        try:
            job = decode(raw)
        except EnvelopeError as bad:
            if raw == NUDGE:  # done with at once: it only woke this worker
                _add(_I, buf, offset + BATCH_DONE[0], 1)
                continue
            _H.pack_into(buf, offset + PENDING_FAILURE[0], 1)
            return i + 1, Failure(raw, None, Code.MALFORMED, bad, "")
        job_id = job.id.encode()[:JOB_ID_LEN].ljust(JOB_ID_LEN, b"\0")
        buf[offset + JOB_ID_OFF:offset + JOB_ID_OFF + JOB_ID_LEN] = job_id
        _D.pack_into(buf, offset + JOB_TIMEOUT[0], job_timeout(job.headers) if job.headers
                     else 0.0)
        started = time.time()
        _D.pack_into(buf, offset + JOB_STARTED_AT[0], started)
        code = 0
        exc: BaseException | None = None
        tb = ""
        try:
            result = call(job)
            if result is not None and result is not True and result is not False \
                    and hasattr(result, "__await__"):
                result = finish(result)
            if result is False:
                code = Code.FAILED
        except Retry as e:
            code, exc = Code.RETRY, e
        except Reject as e:
            code, exc = Code.REJECT, e
        except (Exception, JobTimeout) as e:
            # the consumer is done: no soft timeout may hit the traceback's formatting
            _D.pack_into(buf, offset + JOB_STARTED_AT[0], 0.0)
            code, exc, tb = Code.FAILED, e, traceback.format_exc()
        if _forked:  # we are a copy forked by the consumer: the real worker records the job
            return i, None
        elapsed = time.time() - started
        _D.pack_into(buf, offset + JOB_STARTED_AT[0], 0.0)
        record(buf, offset, elapsed, code == 0)
        if code:
            _H.pack_into(buf, offset + PENDING_FAILURE[0], 1)
            return i + 1, Failure(raw, job, Code(code), exc, tb)
        _add(_I, buf, offset + BATCH_DONE[0], 1)
        if done is not None and (track or job.headers):
            done.append((job, result))
    return n, None


def job_timeout(headers: dict) -> float:
    """A job's own timeout header (seconds), 0.0 when it has none (or a bad one)."""
    value = headers.get("timeout")
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0


def _add(fmt: struct.Struct, buf: Any, pos: int, value: Any) -> None:
    fmt.pack_into(buf, pos, fmt.unpack_from(buf, pos)[0] + value)


def record(buf: Any, offset: int, elapsed: float, ok: bool) -> None:
    """Count one finished job in the slot: processed or failed, its duration's histogram
    bucket, the time spent in consumers (also used by the concurrent asyncio runner)."""
    _add(_Q, buf, offset + (PROCESSED if ok else FAILED)[0], 1)
    pos = offset + HIST_OFF + 4 * bucket(elapsed)
    _I.pack_into(buf, pos, (_I.unpack_from(buf, pos)[0] + 1) & 0xFFFFFFFF)
    _add(_D, buf, offset + BUSY_TOTAL[0], elapsed)
