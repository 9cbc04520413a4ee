"""The job envelope: the msgpack structure stored in Redis for every job.

Wire layout (documented in docs/protocol.md): a msgpack array of exactly 7 items

    [version=1, id: str, topic: str, attempts: int, enqueued_at: float, headers: map, payload]

The array header is always the single byte 0x97, and the first five items come before
``headers`` and ``payload`` so that a Lua script can bump ``attempts`` or add an error to
``headers`` without touching (and re-encoding) the payload.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, ClassVar, Iterable

import msgpack

from .errors import EnvelopeError

VERSION = 1
ARRAY_HEADER = b"\x97"  # fixarray of 7 items
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
NUDGE = b"ssjobs:nudge"   # what a priority push leaves in ready to wake a waiting worker
                          # (no envelope: workers skip it; lua/lib.lua writes the same bytes)
MAX_ATTEMPTS = 1_000_000  # far above any max_retries (<= 1000); a counter beyond it is
                          # corrupt, and a malformed job is dead-lettered, never overflows

_packb = msgpack.packb
_unpackb = msgpack.unpackb


class Job:
    """One job as a consumer sees it (docs/consumers.md)."""

    __slots__ = ("id", "topic", "payload", "attempts", "enqueued_at", "headers")

    def __init__(self, id: str, topic: str, payload: Any, attempts: int = 0,
                 enqueued_at: float = 0.0, headers: dict | None = None) -> None:
        self.id = id
        self.topic = topic
        self.payload = payload
        self.attempts = attempts
        self.enqueued_at = enqueued_at
        self.headers = headers if headers is not None else {}

    # The worker's ssjobs.tracking.Tracker on a tracked topic (None: progress and cancelled
    # touch nothing, as in a consumer's unit test).
    tracker: ClassVar[Any] = None

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, topic={self.topic!r}, attempts={self.attempts})"

    def progress(self, fraction: float, message: str = "") -> None:
        """How far this job is (0..1, and a message), shown by ``ssjobs job show`` and the
        dashboard for a tracked topic; rate-limited, so it may be called often."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not 0 <= fraction <= 1:
            raise ValueError(f"progress fraction must be a number from 0 to 1, got {fraction!r}")
        if Job.tracker is not None:
            Job.tracker.progress(self.id, float(fraction), str(message))

    @property
    def cancelled(self) -> bool:
        """True once someone cancelled this running job (a consumer may check and stop)."""
        return Job.tracker is not None and Job.tracker.cancelled(self.id)


# Job ids: 12 hex digits of epoch milliseconds (so ids sort by enqueue time), then 10 hex
# digits of per-process randomness and a 10-hex-digit sequence number (so ids never collide).
ID_SEQ_MASK = 0xFFFFFFFFFF
# What every new job's envelope starts with: the array, version 1, and the str8 header of
# its 32-character id (the id's bytes follow).
NEW_ENVELOPE_HEAD = ARRAY_HEADER + b"\x01\xd9\x20"
_seq = 0
_seq_lock = threading.Lock()
_node_bits = int.from_bytes(os.urandom(5), "big")


def _reseed_after_fork() -> None:
    global _seq, _seq_lock, _node_bits
    _seq, _seq_lock = 0, threading.Lock()
    _node_bits = int.from_bytes(os.urandom(5), "big")


os.register_at_fork(after_in_child=_reseed_after_fork)


def id_block(now: float, n: int) -> tuple[str, int]:
    """Ids for ``n`` jobs created at ``now``: the 22 hex digits they share and the first of
    their sequence numbers (id i is the prefix + 10 hex digits of (first + i) & ID_SEQ_MASK)."""
    global _seq
    with _seq_lock:
        first = _seq
        _seq = (_seq + n) & ID_SEQ_MASK
    return f"{int(now * 1000):012x}{_node_bits:010x}", first


def new_id(now: float | None = None) -> str:
    """A unique job id that sorts by creation time (32 hex digits)."""
    prefix, seq = id_block(time.time() if now is None else now, 1)
    return f"{prefix}{seq:010x}"


def _middle(topic: str, attempts: int, enqueued_at: float, headers: dict | None) -> bytes:
    """The items between an envelope's id and its payload."""
    return b"".join((_packb(topic), _packb(attempts), _packb(float(enqueued_at)),
                     _packb(headers or {}, use_bin_type=True)))


def new_envelope_middle(topic: str, now: float, headers: dict | None) -> bytes:
    """What comes between a new job's id and its payload: topic, attempts 0, enqueued_at,
    headers; the same for every job of one push."""
    return _middle(topic, 0, now, headers)


def pack_payloads(payloads: Iterable[Any], max_payload_bytes: int) -> list[bytes]:
    """Every payload msgpack-encoded, or the first problem: TypeError naming what msgpack
    cannot encode, ValueError for one over ``max_payload_bytes``."""
    pack = msgpack.Packer(use_bin_type=True).pack   # one per call: a Packer is not shared
    try:
        bodies = [pack(payload) for payload in payloads]
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"payload is not msgpack-serialisable: {exc}") from None
    biggest = max(map(len, bodies), default=0)
    if biggest > max_payload_bytes:
        raise ValueError(f"payload is {biggest} bytes encoded, over max_payload_bytes="
                         f"{max_payload_bytes}")
    return bodies


def encode_payload(payload: Any) -> bytes:
    """msgpack-encode a payload; TypeError names the type msgpack cannot encode."""
    return pack_payloads((payload,), sys.maxsize)[0]


def build(job_id: str, topic: str, payload_bytes: bytes, attempts: int = 0,
          enqueued_at: float | None = None, headers: dict | None = None) -> bytes:
    """Assemble an envelope around an already encoded payload (no re-encoding)."""
    return b"".join((
        ARRAY_HEADER,
        b"\x01",  # version 1 as a positive fixint
        _packb(job_id),
        _middle(topic, attempts, time.time() if enqueued_at is None else enqueued_at, headers),
        payload_bytes,
    ))


def encode(job_id: str, topic: str, payload: Any, attempts: int = 0,
           enqueued_at: float | None = None, headers: dict | None = None) -> bytes:
    return build(job_id, topic, encode_payload(payload), attempts, enqueued_at, headers)


def encode_job(job: Job) -> bytes:
    return encode(job.id, job.topic, job.payload, job.attempts, job.enqueued_at, job.headers)


def decode(raw: bytes) -> Job:
    """Decode an envelope strictly; anything else raises EnvelopeError."""
    try:
        obj = _unpackb(raw, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise EnvelopeError(f"not msgpack: {exc.__class__.__name__}: {exc}") from None
    return from_list(obj)


def from_list(obj: Any) -> Job:
    """The job of an unpacked envelope array; EnvelopeError unless it is exactly one."""
    if type(obj) is not list or len(obj) != 7:
        raise EnvelopeError("not a 7-item envelope array")
    version, job_id, topic, attempts, enqueued_at, headers, payload = obj
    if version != VERSION:
        raise EnvelopeError(f"unsupported envelope version {version!r}")
    if type(job_id) is not str or type(topic) is not str:
        raise EnvelopeError("id and topic must be strings")
    if type(attempts) is not int or not 0 <= attempts < MAX_ATTEMPTS:
        raise EnvelopeError(f"attempts must be an integer in 0..{MAX_ATTEMPTS - 1}")
    if type(enqueued_at) is int:
        enqueued_at = float(enqueued_at)
    elif type(enqueued_at) is not float:
        raise EnvelopeError("enqueued_at must be a number")
    if type(headers) is list and not headers:
        headers = {}  # Lua's cmsgpack packs an empty table as an array
    elif type(headers) is not dict:
        raise EnvelopeError("headers must be a map")
    return Job(job_id, topic, payload, attempts, enqueued_at, headers)
