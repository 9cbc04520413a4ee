# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled hot loop; mirrors ``_fastloop_py.py`` (the readable spec) name for name.

The scoreboard slot is written through a raw pointer into the mmap'd buffer, at the offsets
that ``scoreboard.py`` defines (a test checks that both agree)."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

import traceback

from .envelope import Job
from .errors import EnvelopeError, JobTimeout, Reject, Retry
from . import scoreboard as _sb

from msgpack import unpackb as _unpackb

IMPLEMENTATION = "compiled"

FAILED_RUN = 1
RETRY = 2
REJECT = 3
MALFORMED = 4

cdef Py_ssize_t OFF_STATE = _sb.STATE[0]
cdef Py_ssize_t OFF_PROCESSED = _sb.PROCESSED[0]
cdef Py_ssize_t OFF_FAILED = _sb.FAILED[0]
cdef Py_ssize_t OFF_JOB_STARTED = _sb.JOB_STARTED_AT[0]
cdef Py_ssize_t OFF_JOB_ID = _sb.JOB_ID_OFF
cdef Py_ssize_t JOB_ID_LEN = _sb.JOB_ID_LEN
cdef Py_ssize_t OFF_HIST = _sb.HIST_OFF
cdef int HIST_BUCKETS = _sb.HIST_BUCKETS
cdef Py_ssize_t OFF_BUSY = _sb.BUSY_TOTAL[0]
cdef uint8_t BUSY = _sb.BUSY
cdef double HIST_FIRST_S = _sb.HIST_BOUNDS_S[0]

cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline int _bucket(double elapsed) noexcept nogil:
    # Bounds double from HIST_FIRST_S; the last bucket is open-ended.
    cdef int b = 0
    cdef double bound = HIST_FIRST_S
    while b < HIST_BUCKETS - 1 and elapsed >= bound:
        b += 1
        bound *= 2
    return b


cdef object _decode(object raw):
    try:
        obj = _unpackb(raw, raw=False)
    except Exception as exc:
        raise EnvelopeError(f"not msgpack: {exc.__class__.__name__}: {exc}") from None
    if type(obj) is not list or len(<list>obj) != 7:
        raise EnvelopeError("not a 7-item envelope array")
    version, job_id, topic, attempts, enqueued_at, headers, payload = <list>obj
    if version != 1:
        raise EnvelopeError(f"unsupported envelope version {version!r}")
    if type(job_id) is not str or type(topic) is not str:
        raise EnvelopeError("id and topic must be strings")
    if type(attempts) is not int or attempts < 0:
        raise EnvelopeError("attempts must be a non-negative integer")
    if type(enqueued_at) is int:
        enqueued_at = float(enqueued_at)
    elif type(enqueued_at) is not float:
        raise EnvelopeError("enqueued_at must be a number")
    if type(headers) is list and not headers:
        headers = {}
    elif type(headers) is not dict:
        raise EnvelopeError("headers must be a map")
    return Job(job_id, topic, payload, attempts, enqueued_at, headers)


def run_batch(list raws, call, buf, Py_ssize_t offset, ctl):
    """See ``_fastloop_py.run_batch``."""
    cdef unsigned char[::1] view = buf
    cdef char* slot = <char*>&view[0] + offset
    cdef Py_ssize_t i, n = len(raws), idlen
    cdef long processed = 0
    cdef int code
    cdef double started, elapsed
    cdef bytes id_b
    cdef list failures = []
    slot[OFF_STATE] = <char>BUSY
    for i in range(n):
        if ctl.stopping:
            return processed, failures, raws[i:]
        raw = raws[i]
        try:
            job = _decode(raw)
        except EnvelopeError as exc:
            failures.append((raw, None, MALFORMED, exc, ""))
            continue
        id_b = (<str>job.id).encode()
        idlen = min(len(id_b), JOB_ID_LEN)
        memset(slot + OFF_JOB_ID, 0, JOB_ID_LEN)
        memcpy(slot + OFF_JOB_ID, <char*>id_b, idlen)
        started = _now()
        (<double*>(slot + OFF_JOB_STARTED))[0] = started
        code = 0
        exc = None
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
        elapsed = _now() - started
        if code == 0:
            (<uint64_t*>(slot + OFF_PROCESSED))[0] += 1
            processed += 1
        else:
            (<uint64_t*>(slot + OFF_FAILED))[0] += 1
            failures.append((raw, job, code, exc, tb))
        (<uint32_t*>(slot + OFF_HIST + 4 * _bucket(elapsed)))[0] += 1
        (<double*>(slot + OFF_BUSY))[0] += elapsed
    return processed, failures, []
