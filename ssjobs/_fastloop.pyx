# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled hot loop; mirrors ``_fastloop_py.py`` (the readable spec) name for name.

The scoreboard slot is written through raw pointers into the mmap'd buffer, at the offsets
that ``scoreboard.py`` defines (a test checks that both agree). The pointer writes store
native-endian values where the layout says little-endian: ssjobs runs on little-endian Linux
(x86_64, aarch64)."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

import traceback

from .envelope import ID_SEQ_MASK, NEW_ENVELOPE_HEAD, NUDGE, Job, from_list
from .errors import EnvelopeError, JobTimeout, Reject, Retry
from .outcome import Code, Failure
from ._fastloop_py import job_timeout
from . import scoreboard as _sb

from msgpack import unpackb as _unpackb

IMPLEMENTATION = "compiled"

cdef Py_ssize_t OFF_STATE = _sb.STATE[0]
cdef Py_ssize_t OFF_PROCESSED = _sb.PROCESSED[0]
cdef Py_ssize_t OFF_FAILED = _sb.FAILED[0]
cdef Py_ssize_t OFF_JOB_STARTED = _sb.JOB_STARTED_AT[0]
cdef Py_ssize_t OFF_DONE = _sb.BATCH_DONE[0]
cdef Py_ssize_t OFF_PENDING = _sb.PENDING_FAILURE[0]
cdef Py_ssize_t OFF_TIMEOUT = _sb.JOB_TIMEOUT[0]
cdef Py_ssize_t OFF_JOB_ID = _sb.JOB_ID_OFF
cdef Py_ssize_t JOB_ID_LEN = _sb.JOB_ID_LEN
cdef Py_ssize_t OFF_HIST = _sb.HIST_OFF
cdef int HIST_BUCKETS = _sb.HIST_BUCKETS
cdef Py_ssize_t OFF_BUSY = _sb.BUSY_TOTAL[0]
cdef uint8_t BUSY = _sb.BUSY
cdef double HIST_FIRST_S = _sb.HIST_BOUNDS_S[0]

cdef object C_FAILED = Code.FAILED
cdef object C_RETRY = Code.RETRY
cdef object C_REJECT = Code.REJECT
cdef object C_MALFORMED = Code.MALFORMED
cdef object C_TOO_LARGE = Code.TOO_LARGE

cdef int _forked = 0


def mark_forked():
    """See ``_fastloop_py.mark_forked``."""
    global _forked
    _forked = 1


cdef const char* _HEX = b"0123456789abcdef"


def assemble(str prefix, first, bytes middle, list bodies):
    """See ``_fastloop_py.assemble``: one allocation per envelope, the sequence digits
    written straight into it and into the id."""
    cdef bytes head = NEW_ENVELOPE_HEAD + prefix.encode("ascii")
    cdef Py_ssize_t n_head = len(head), n_mid = len(middle), i, k, n_body
    cdef uint64_t seq = first, mask = ID_SEQ_MASK
    cdef char digits[32]
    cdef char* out
    cdef bytes body, env
    cdef list ids = [], envelopes = []
    if len(prefix) != 22:
        raise ValueError("an id prefix has 22 hex digits")
    memcpy(digits, PyBytes_AS_STRING(head) + 4, 22)
    for i in range(len(bodies)):
        body = <bytes>bodies[i]
        n_body = PyBytes_GET_SIZE(body)
        for k in range(10):
            digits[31 - k] = _HEX[(seq >> (4 * k)) & 15]
        env = PyBytes_FromStringAndSize(NULL, n_head + 10 + n_mid + n_body)
        out = PyBytes_AS_STRING(env)
        memcpy(out, PyBytes_AS_STRING(head), n_head)
        memcpy(out + n_head, digits + 22, 10)
        memcpy(out + n_head + 10, PyBytes_AS_STRING(middle), n_mid)
        memcpy(out + n_head + 10 + n_mid, PyBytes_AS_STRING(body), n_body)
        envelopes.append(env)
        ids.append(digits[:32].decode("ascii"))
        seq = (seq + 1) & mask
    return ids, envelopes


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


cdef inline Py_ssize_t _str_at(const unsigned char* p, Py_ssize_t pos, Py_ssize_t n,
                               Py_ssize_t* length) noexcept:
    """Start of a fixstr/str8 at ``pos`` (its length in ``length``), or -1."""
    cdef unsigned char b
    if pos >= n:
        return -1
    b = p[pos]
    if 0xa0 <= b <= 0xbf:
        length[0] = b & 0x1f
        pos += 1
    elif b == 0xd9 and pos + 1 < n:
        length[0] = p[pos + 1]
        pos += 2
    else:
        return -1
    if pos + length[0] > n:
        return -1
    return pos


cdef object _last_topic_b = None
cdef object _last_topic = None


def bucket(double elapsed):
    """The histogram bucket of a job that took ``elapsed`` seconds (see scoreboard.bucket_of)."""
    return _bucket(elapsed)


cdef object _decode_fast(bytes raw):
    """Decode the canonical envelope layout that producers write (fixed header, empty
    headers map) without the generic unpacker; None when the bytes are anything else, and
    the caller falls back to the strict generic decoder."""
    global _last_topic_b, _last_topic
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), pos, id_len, topic_len, topic_pos
    cdef uint64_t bits = 0
    cdef double enqueued
    cdef int k
    if n < 16 or p[0] != 0x97 or p[1] != 0x01:
        return None
    pos = _str_at(p, 2, n, &id_len)
    if pos < 0:
        return None
    try:
        job_id = PyUnicode_DecodeUTF8(<char*>p + pos, id_len, "strict")
    except UnicodeDecodeError:
        return None
    topic_pos = _str_at(p, pos + id_len, n, &topic_len)
    if topic_pos < 0:
        return None
    pos = topic_pos + topic_len
    if pos + 11 > n or p[pos] > 0x7f or p[pos + 1] != 0xcb or p[pos + 10] != 0x80:
        return None
    topic_b = raw[topic_pos:pos]
    if topic_b == _last_topic_b:
        topic = _last_topic
    else:
        try:
            topic = topic_b.decode("utf-8")
        except UnicodeDecodeError:
            return None
        _last_topic_b, _last_topic = topic_b, topic
    attempts = p[pos]
    for k in range(8):
        bits = (bits << 8) | p[pos + 2 + k]
    memcpy(&enqueued, &bits, 8)
    pos += 11
    if pos >= n:
        return None
    if pos == n - 1 and p[pos] == 0xc0:
        payload = None
    else:
        try:
            payload = _unpackb(raw[pos:], raw=False)
        except Exception:
            return None
    job = Job.__new__(Job)
    job.id = job_id
    job.topic = topic
    job.payload = payload
    job.attempts = attempts
    job.enqueued_at = enqueued
    job.headers = {}
    return job


cdef object _decode(object raw):
    if type(raw) is bytes:
        job = _decode_fast(<bytes>raw)
        if job is not None:
            return job
    try:
        obj = _unpackb(raw, raw=False)
    except Exception as exc:
        raise EnvelopeError(f"not msgpack: {exc.__class__.__name__}: {exc}") from None
    return from_list(obj)


def run_batch(list raws, call, finish, buf, Py_ssize_t offset, ctl, Py_ssize_t max_bytes,
              list done=None, bint track=False):
    """See ``_fastloop_py.run_batch``."""
    cdef unsigned char[::1] view = buf
    cdef char* slot = <char*>&view[0] + offset
    cdef Py_ssize_t i, n = len(raws), idlen
    cdef double started, elapsed
    cdef bytes id_b
    slot[OFF_STATE] = <char>BUSY
    for i in range(n):
        if ctl.stopping:
            return i, None
        raw = raws[i]
        if len(raw) > max_bytes:
            (<uint16_t*>(slot + OFF_PENDING))[0] = 1
            return i + 1, Failure(raw, None, C_TOO_LARGE, None, "")
        try:
            job = _decode(raw)
        except EnvelopeError as exc:
            if raw == NUDGE:  # done with at once: it only woke this worker
                (<uint32_t*>(slot + OFF_DONE))[0] += 1
                continue
            (<uint16_t*>(slot + OFF_PENDING))[0] = 1
            return i + 1, Failure(raw, None, C_MALFORMED, exc, "")
        headers = (<object>job).headers
        if headers:
            (<double*>(slot + OFF_TIMEOUT))[0] = job_timeout(headers)
        else:
            (<double*>(slot + OFF_TIMEOUT))[0] = 0.0
        id_b = (<str>job.id).encode()
        idlen = min(len(id_b), JOB_ID_LEN)
        memset(slot + OFF_JOB_ID, 0, JOB_ID_LEN)
        memcpy(slot + OFF_JOB_ID, <char*>id_b, idlen)
        started = _now()
        (<double*>(slot + OFF_JOB_STARTED))[0] = started
        code = None
        exc = None
        tb = ""
        try:
            result = call(job)
            if result is not None and result is not True and result is not False \
                    and hasattr(result, "__await__"):
                result = finish(result)
            if result is False:
                code = C_FAILED
        except Retry as e:
            code, exc = C_RETRY, e
        except Reject as e:
            code, exc = C_REJECT, e
        except (Exception, JobTimeout) as e:
            # the consumer is done: no soft timeout may hit the traceback's formatting
            (<double*>(slot + OFF_JOB_STARTED))[0] = 0.0
            code, exc, tb = C_FAILED, e, traceback.format_exc()
        if _forked:  # a copy forked by the consumer: the real worker records the job
            return i, None
        elapsed = _now() - started
        (<double*>(slot + OFF_JOB_STARTED))[0] = 0.0
        (<uint32_t*>(slot + OFF_HIST + 4 * _bucket(elapsed)))[0] += 1
        (<double*>(slot + OFF_BUSY))[0] += elapsed
        if code is None:
            (<uint64_t*>(slot + OFF_PROCESSED))[0] += 1
            (<uint32_t*>(slot + OFF_DONE))[0] += 1
            if done is not None and (track or headers):
                done.append((job, result))
        else:
            (<uint64_t*>(slot + OFF_FAILED))[0] += 1
            (<uint16_t*>(slot + OFF_PENDING))[0] = 1
            return i + 1, Failure(raw, job, code, exc, tb)
    return n, None
