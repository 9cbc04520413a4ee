"""The shared-memory scoreboard: an mmap'd file in data_dir with a header and one fixed-size
slot per worker. Each worker writes only its own slot; the master and `ssjobs status` read
them all, so status works even while the master is busy.

The slot layout is defined here once; ``_fastloop.pyx`` writes the same offsets (a test
checks that both agree).
"""
from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

MAGIC = b"SSJB"
LAYOUT_VERSION = 2
HEADER = struct.Struct("<4sIIIdd32x")          # magic, version, nslots, master pid, started, beat
HEADER_SIZE = HEADER.size                        # 64
SLOT_SIZE = 256

# Slot fields: (offset, struct format). pid 0 means the slot is free.
PID, STATE, KIND, INDEX = (0, "<I"), (4, "<B"), (5, "<B"), (6, "<H")
STARTED_AT, HEARTBEAT = (8, "<d"), (16, "<d")
PROCESSED, FAILED = (24, "<Q"), (32, "<Q")
JOB_STARTED_AT, RSS = (40, "<d"), (48, "<Q")
TOPIC_OFF, TOPIC_LEN = 56, 64
JOB_ID_OFF, JOB_ID_LEN = 120, 32
HIST_OFF, HIST_BUCKETS = 152, 24                # u32 counts of job durations
BUSY_TOTAL = (248, "<d")                        # seconds spent inside consumers

STATES = ("free", "starting", "idle", "busy", "stopping")
FREE, STARTING, IDLE, BUSY, STOPPING = range(5)
KINDS = ("static", "dynamic")

# Histogram bucket i counts jobs that took < HIST_BOUNDS_S[i] (the last one is +inf):
# 100 µs doubling, so 24 buckets reach ~7 min before the overflow bucket (job_timeout is
# typically minutes, so p95 of slow jobs stays meaningful).
HIST_BOUNDS_S = tuple(0.0001 * 2 ** i for i in range(HIST_BUCKETS - 1)) + (float("inf"),)


def bucket_of(seconds: float) -> int:
    for i, bound in enumerate(HIST_BOUNDS_S):
        if seconds < bound:
            return i
    return HIST_BUCKETS - 1


class Slot:
    """One worker's slot; methods write straight into the shared mapping."""

    __slots__ = ("buf", "offset")

    def __init__(self, buf: mmap.mmap, offset: int) -> None:
        self.buf = buf
        self.offset = offset

    def _put(self, field: tuple[int, str], value) -> None:
        struct.pack_into(field[1], self.buf, self.offset + field[0], value)

    def _get(self, field: tuple[int, str]):
        return struct.unpack_from(field[1], self.buf, self.offset + field[0])[0]

    def claim(self, pid: int, topic: str, kind: int, index: int, now: float) -> None:
        self.buf[self.offset:self.offset + SLOT_SIZE] = bytes(SLOT_SIZE)
        topic_b = topic.encode()[:TOPIC_LEN]
        self.buf[self.offset + TOPIC_OFF:self.offset + TOPIC_OFF + len(topic_b)] = topic_b
        for field, value in ((STATE, STARTING), (KIND, kind), (INDEX, index),
                             (STARTED_AT, now), (HEARTBEAT, now), (PID, pid)):
            self._put(field, value)

    def release(self) -> None:
        self._put(PID, 0)
        self._put(STATE, FREE)

    def set_state(self, state: int) -> None:
        self._put(STATE, state)

    def beat(self, now: float) -> None:
        self._put(HEARTBEAT, now)

    def set_rss(self, rss: int) -> None:
        self._put(RSS, rss)

    @property
    def pid(self) -> int:
        return self._get(PID)

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


class Scoreboard:
    """Create (master) or open (status, workers after fork) the scoreboard file."""

    def __init__(self, path: Path, buf: mmap.mmap, nslots: int) -> None:
        self.path = path
        self.buf = buf
        self.nslots = nslots

    @classmethod
    def create(cls, path: Path, nslots: int, master_pid: int | None = None) -> Scoreboard:
        size = HEADER_SIZE + SLOT_SIZE * nslots
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
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
        """Open an existing scoreboard; ValueError if it is not one (corrupt/truncated)."""
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
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
