"""Pure-Python twin of ``_fastloop.pyx``: the readable spec of the hot loop.

``run_batch`` decodes each fetched envelope, calls the consumer, times it, classifies the
outcome and keeps the worker's scoreboard slot current, so the worker can settle the whole
batch with one Redis round trip. Both twins expose the same names and behaviour.
"""
from __future__ import annotations

import struct
import time
import traceback

from .envelope import decode
from .errors import EnvelopeError, JobTimeout, Reject, Retry
from .scoreboard import (
    BUSY,
    BUSY_TOTAL,
    FAILED,
    HIST_OFF,
    JOB_ID_LEN,
    JOB_ID_OFF,
    JOB_STARTED_AT,
    PROCESSED,
    STATE,
)
from .scoreboard import bucket_of as bucket  # the histogram bucket of a job's duration

IMPLEMENTATION = "pure"

# Outcome codes of a failed job (success is not reported per job).
FAILED_RUN, RETRY, REJECT, MALFORMED = 1, 2, 3, 4

_D = struct.Struct("<d")
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
_B = struct.Struct("<B")


def run_batch(raws, call, buf, offset, ctl):
    """Run the jobs of one fetched batch in order.

    ``call(job)`` is the consumer; ``buf``/``offset`` locate the worker's scoreboard slot;
    ``ctl.stopping`` is checked before each job. Returns ``(processed, failures, unstarted)``:
    ``failures`` holds ``(raw, job or None, code, exception or None, traceback text)``,
    ``unstarted`` the raw envelopes not begun because the worker is stopping.
    """
    processed = 0
    failures = []
    n = len(raws)
    _B.pack_into(buf, offset + STATE[0], BUSY)
    for i in range(n):
        if ctl.stopping:
            return processed, failures, raws[i:]
        raw = raws[i]
        try:
            job = decode(raw)
        except EnvelopeError as bad:
            failures.append((raw, None, MALFORMED, bad, ""))
            continue
        job_id = job.id.encode()[:JOB_ID_LEN].ljust(JOB_ID_LEN, b"\0")
        buf[offset + JOB_ID_OFF:offset + JOB_ID_OFF + JOB_ID_LEN] = job_id
        started = time.time()
        _D.pack_into(buf, offset + JOB_STARTED_AT[0], started)
        code = 0
        exc: BaseException | None = None
        tb = ""
        try:
            if call(job) is False:
                code = FAILED_RUN
        except Retry as e:
            code, exc = RETRY, e
        except Reject as e:
            code, exc = REJECT, e
        except (Exception, JobTimeout) as e:
            code, exc, tb = FAILED_RUN, e, traceback.format_exc()
        elapsed = time.time() - started
        _record(buf, offset, elapsed, code == 0)
        if code:
            failures.append((raw, job, code, exc, tb))
        else:
            processed += 1
    return processed, failures, []


def _record(buf, offset, elapsed, ok):
    field = PROCESSED if ok else FAILED
    pos = offset + field[0]
    _Q.pack_into(buf, pos, _Q.unpack_from(buf, pos)[0] + 1)
    pos = offset + HIST_OFF + 4 * bucket(elapsed)
    _I.pack_into(buf, pos, (_I.unpack_from(buf, pos)[0] + 1) & 0xFFFFFFFF)
    pos = offset + BUSY_TOTAL[0]
    _D.pack_into(buf, pos, _D.unpack_from(buf, pos)[0] + elapsed)
