"""The shared-memory scoreboard: an mmap'd file in data_dir with a header and one fixed-size
slot per worker. Each worker writes only its own slot; the master and `ssjobs status` read
them all, so status works even while the master is busy.

The slot layout is defined here once; ``_fastloop.pyx`` writes the same offsets (a test
checks that both agree).
"""
from __future__ import annotations

import enum
import mmap
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from . import fsguard
from .errors import UnsafePathError
from .names import MAX_TOPIC_BYTES

MAGIC = b"SSJB"
LAYOUT_VERSION = 3
HEADER = struct.Struct("<4sIIIdd32x")          # magic, version, nslots, master pid, started, beat
HEADER_SIZE = HEADER.size                        # 64
SLOT_SIZE = 512

# Slot fields: (offset, struct format), little-endian (the compiled loop writes the counters
# through native pointers: ssjobs runs on little-endian Linux machines). pid 0 = free slot.
PID, STATE, KIND, INDEX = (0, "<I"), (4, "<B"), (5, "<B"), (6, "<H")
STARTED_AT, HEARTBEAT = (8, "<d"), (16, "<d")
PROCESSED, FAILED = (24, "<Q"), (32, "<Q")
JOB_STARTED_AT, RSS = (40, "<d"), (48, "<Q")     # JOB_STARTED_AT: 0 unless a consumer runs
# Crash recovery (docs/design.md): the batch the worker holds, how many of its oldest jobs
# succeeded since the last settle, and how many after those ran and await their settle (a
# failure; with concurrent asyncio jobs, a whole wave).
BATCH_SEQ, BATCH_DONE, PENDING_FAILURE = (56, "<Q"), (64, "<I"), (68, "<H")
SERIAL = (72, "<I")                             # the master's fork counter: part of the name
BUSY_TOTAL = (80, "<d")                         # seconds spent inside consumers
HIST_OFF, HIST_BUCKETS = 88, 24                 # u32 counts of job durations
TOPIC_OFF, TOPIC_LEN = 184, MAX_TOPIC_BYTES
JOB_ID_OFF, JOB_ID_LEN = 248, 128               # ids of other producers may be this long
JOB_TIMEOUT = (376, "<d")                       # the running job's own timeout; 0: the topic's


class State(enum.IntEnum):
    FREE = 0
    STARTING = 1
    IDLE = 2
    BUSY = 3
    STOPPING = 4


class Kind(enum.IntEnum):
    STATIC = 0
    DYNAMIC = 1


FREE, STARTING, IDLE, BUSY, STOPPING = State
STATES = tuple(s.name.lower() for s in State)
KINDS = tuple(k.name.lower() for k in Kind)

# Histogram bucket i counts jobs that took < HIST_BOUNDS_S[i] (the last one is +inf):
# 100 µs doubling, so 24 buckets reach ~7 min before the overflow bucket (job_timeout is
# typically minutes, so p95 of slow jobs stays meaningful).
HIST_BOUNDS_S = tuple(0.0001 * 2 ** i for i in range(HIST_BUCKETS - 1)) + (float("inf"),)


def bucket_of(seconds: float) -> int:
    for i, bound in enumerate(HIST_BOUNDS_S):
        if seconds < bound:
            return i
    return HIST_BUCKETS - 1


# -- job-time histograms: percentiles and sums (status, top, metrics) ----------------------

def quantile(hist: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) in seconds of a scoreboard histogram, interpolated linearly
    inside its bucket; None without any job. Like Prometheus' ``histogram_quantile``, a rank
    in the overflow bucket gives the highest finite bound."""
    total = sum(hist)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(hist):
        if count and seen + count >= rank:
            low = HIST_BOUNDS_S[i - 1] if i else 0.0
            high = HIST_BOUNDS_S[i]
            if high == float("inf"):
                return low
            return low + (high - low) * (rank - seen) / count
        seen += count
    return HIST_BOUNDS_S[-2]


def percentiles_ms(hist: Sequence[int] | None) -> dict[str, float | None]:
    """``{"p50_ms", "p95_ms"}`` of a histogram (None when it counts no job)."""
    out: dict[str, float | None] = {}
    for name, q in (("p50_ms", 0.50), ("p95_ms", 0.95)):
        value = quantile(hist, q) if hist else None
        out[name] = None if value is None else round(value * 1000, 3)
    return out


def merge(into: list[int], hist: Sequence[int]) -> list[int]:
    for i, count in enumerate(hist):
        into[i] += count
    return into


def topic_histograms(slots: list[dict]) -> dict[str, list[int]]:
    """Per topic, the sum of the ``histogram`` of the given scoreboard slots."""
    out: dict[str, list[int]] = {}
    for slot in slots:
        merge(out.setdefault(slot["topic"], [0] * HIST_BUCKETS), slot["histogram"])
    return out



class Slot:
    """One worker's slot; methods write straight into the shared mapping. The worker writes
    its own slot (the hot loop through a pointer); the master and the console only read,
    except for ``claim``/``set_pid``/``release`` around a worker's life."""

    __slots__ = ("buf", "offset")

    def __init__(self, buf: mmap.mmap, offset: int) -> None:
        self.buf = buf
        self.offset = offset

    def _put(self, field: tuple[int, str], value: Any) -> None:
        struct.pack_into(field[1], self.buf, self.offset + field[0], value)

    def _get(self, field: tuple[int, str]) -> Any:
        return struct.unpack_from(field[1], self.buf, self.offset + field[0])[0]

    def claim(self, pid: int, topic: str, kind: int, index: int, now: float,
              serial: int = 0) -> None:
        self.buf[self.offset:self.offset + SLOT_SIZE] = bytes(SLOT_SIZE)
        topic_b = topic.encode()[:TOPIC_LEN]
        self.buf[self.offset + TOPIC_OFF:self.offset + TOPIC_OFF + len(topic_b)] = topic_b
        for field, value in ((STATE, STARTING), (KIND, kind), (INDEX, index),
                             (STARTED_AT, now), (HEARTBEAT, now), (SERIAL, serial), (PID, pid)):
            self._put(field, value)

    def release(self) -> None:
        self._put(PID, 0)
        self._put(STATE, FREE)

    def set_pid(self, pid: int) -> None:
        self._put(PID, pid)

    def set_state(self, state: int) -> None:
        self._put(STATE, state)

    def beat(self, now: float) -> None:
        self._put(HEARTBEAT, now)

    def set_rss(self, rss: int) -> None:
        self._put(RSS, rss)

    def hold_batch(self, seq: int) -> None:
        """The worker holds batch ``seq``, none of it finished yet."""
        self._put(BATCH_SEQ, seq)
        self._put(BATCH_DONE, 0)
        self._put(PENDING_FAILURE, 0)

    def job_started(self, job_id: str, now: float) -> None:
        id_b = job_id.encode()[:JOB_ID_LEN].ljust(JOB_ID_LEN, b"\0")
        self.buf[self.offset + JOB_ID_OFF:self.offset + JOB_ID_OFF + JOB_ID_LEN] = id_b
        self._put(JOB_STARTED_AT, now)

    def job_ended(self) -> None:
        self._put(JOB_STARTED_AT, 0.0)

    def add_done(self, n: int) -> None:
        """``n`` more of the batch's oldest jobs succeeded (the hot loop does this itself)."""
        self._put(BATCH_DONE, self._get(BATCH_DONE) + n)

    def set_pending(self, n: int) -> None:
        """``n`` jobs after the done ones ran and await their settle (0: none)."""
        self._put(PENDING_FAILURE, n)

    @property
    def pid(self) -> int:
        return self._get(PID)

    @property
    def state(self) -> State:
        value = self._get(STATE)
        return State(value) if value < len(State) else State.FREE

    @property
    def heartbeat(self) -> float:
        return self._get(HEARTBEAT)

    def timeout_of_job(self, default: float) -> float:
        """The running job's timeout: its own header's, else ``default`` (job_timeout)."""
        return self._get(JOB_TIMEOUT) or default

    @property
    def job_started_at(self) -> float:
        """When the running job started (0.0: no consumer is running)."""
        return self._get(JOB_STARTED_AT)

    @property
    def started_at(self) -> float:
        """When the slot was claimed for its worker (0.0: never claimed)."""
        return self._get(STARTED_AT)

    @property
    def serial(self) -> int:
        return self._get(SERIAL)

    def batch(self) -> BatchPosition:
        """Where the worker is in its batch, as crash recovery needs it."""
        pending = self._get(PENDING_FAILURE)
        return BatchPosition(self._get(BATCH_SEQ), self._get(BATCH_DONE),
                             pending or (1 if self.job_started_at else 0))

    def read(self) -> dict:
        o, buf = self.offset, self.buf
        topic = bytes(buf[o + TOPIC_OFF:o + TOPIC_OFF + TOPIC_LEN]).rstrip(b"\0").decode(
            errors="replace")
        job_id = bytes(buf[o + JOB_ID_OFF:o + JOB_ID_OFF + JOB_ID_LEN]).rstrip(b"\0").decode(
            errors="replace")
        state = self._get(STATE)
        job_started = self._get(JOB_STARTED_AT)
        return {
            "pid": self._get(PID), "topic": topic,
            "kind": KINDS[self._get(KIND) & 1], "index": self._get(INDEX),
            "state": STATES[state] if state < len(STATES) else "unknown",
            "started_at": self._get(STARTED_AT), "heartbeat": self._get(HEARTBEAT),
            "processed": self._get(PROCESSED), "failed": self._get(FAILED),
            "job_started_at": job_started if state == BUSY and job_started else None,
            "job_id": job_id if state == BUSY else None,
            "rss_bytes": self._get(RSS),
            "busy_seconds": self._get(BUSY_TOTAL),
            "histogram": list(struct.unpack_from(f"<{HIST_BUCKETS}I", buf, o + HIST_OFF)),
        }


class BatchPosition(NamedTuple):
    seq: int         # the batch the worker holds (its number in the protocol)
    done: int        # its oldest jobs that succeeded since the last settle
    running: int     # the jobs after those that were running, or failed and await their
                     # settle: each is charged one attempt when the worker dies


class Scoreboard:
    """Create (master) or open (status, workers after fork) the scoreboard file."""

    def __init__(self, path: Path, buf: mmap.mmap, nslots: int) -> None:
        self.path = path
        self.buf = buf
        self.nslots = nslots

    @classmethod
    def create(cls, path: Path, nslots: int, master_pid: int | None = None) -> Scoreboard:
        size = HEADER_SIZE + SLOT_SIZE * nslots
        # a fresh name nobody could plant a link at (O_EXCL), renamed over the path
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            os.ftruncate(fd, size)
            buf = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        now = time.time()
        HEADER.pack_into(buf, 0, MAGIC, LAYOUT_VERSION, nslots,
                         master_pid or os.getpid(), now, now)
        os.replace(tmp, path)
        return cls(path, buf, nslots)

    @classmethod
    def open(cls, path: Path, *, writable: bool = False) -> Scoreboard:
        """Open an existing scoreboard; ValueError if it is not one (corrupt/truncated).
        A link planted at its path is not followed (ValueError too)."""
        try:
            fd = fsguard.open_file(path, os.O_RDWR if writable else os.O_RDONLY)
        except UnsafePathError as exc:
            raise ValueError(str(exc)) from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise ValueError("scoreboard too small")
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            buf = mmap.mmap(fd, size, access=access)
        finally:
            os.close(fd)
        magic, version, nslots, *_ = HEADER.unpack_from(buf, 0)
        if magic != MAGIC or version != LAYOUT_VERSION or size < HEADER_SIZE + nslots * SLOT_SIZE:
            buf.close()
            raise ValueError("not an ssjobs scoreboard (bad magic, version or size)")
        return cls(path, buf, nslots)

    def header(self) -> dict:
        magic, version, nslots, pid, started, beat = HEADER.unpack_from(self.buf, 0)
        return {"nslots": nslots, "master_pid": pid, "started_at": started, "heartbeat": beat}

    def master_beat(self, now: float) -> None:
        struct.pack_into("<d", self.buf, 32, now)

    def slot(self, index: int) -> Slot:
        if not 0 <= index < self.nslots:
            raise IndexError(index)
        return Slot(self.buf, HEADER_SIZE + index * SLOT_SIZE)

    def workers(self) -> list[dict]:
        out = []
        for i in range(self.nslots):
            slot = self.slot(i)
            if slot.pid:
                info = slot.read()
                info["slot"] = i
                out.append(info)
        return out

    def close(self) -> None:
        try:
            self.buf.close()
        except (BufferError, ValueError):
            pass


def private_slot() -> Slot:
    """A slot in anonymous memory, for a worker run without a master (tests, debugging)."""
    buf = mmap.mmap(-1, SLOT_SIZE)
    return Slot(buf, 0)


def read_board(path: Path) -> tuple[list[dict], dict] | None:
    """Every live slot (``Slot.read`` plus its index) and the header of the scoreboard at
    ``path``, read at once; None when there is none or it is not (yet) valid."""
    try:
        board = Scoreboard.open(path)
    except (OSError, ValueError):
        return None
    try:
        return board.workers(), board.header()
    finally:
        board.close()

