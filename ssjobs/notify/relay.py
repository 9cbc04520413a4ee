"""Forward ERROR log lines from forked workers to the one notifier sender in the master.

The channel is a Unix datagram socketpair the master opens before it forks its first
worker (:func:`open_channel`); every worker inherits the sending end and, right after
fork, installs a log error sink that sends each ERROR record through it as one small JSON
datagram. The master's :class:`RelayServer` reads the other end on a background thread.
Sending is non-blocking and best effort: a full queue drops the line (the log file still
has it), so a worker never waits on notifications.

A socketpair has no name: no other process can bind it first, listen in, or even address
it (an abstract socket name, which this replaced, could be bound by any local user who
read the master's pid and start time from /proc). The relay still asks the kernel for each
sender's credentials (``SO_PASSCRED``) and drops datagrams from other users. The channel
lives as long as the master: a reload replaces the server, not the channel, so workers
forked before the reload keep reaching it. If it cannot be opened, the master logs it at
ERROR and ``status`` shows it (:mod:`ssjobs.problems`).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from .. import logs, problems

log = logging.getLogger(__name__)

MAX_DATAGRAM_BYTES = 64 * 1024  # well under the default socket send buffer (~208 KiB)
MAX_FIELD_CHARS = 16_000  # a message or traceback is cut to this before it is sent
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_FIELDS = ("time", "level", "pid", "role", "logger", "msg", "exc", "topic", "job_id", "attempt")
_SCALARS = (str, int, float, bool, type(None))
PROBLEM = "relay"  # the key under which status shows a relay that could not be set up

Sink = Callable[[dict[str, Any]], None]


class Channel:
    """The socketpair between a master (``owner``) and its workers."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.receiver, self.sender = socket.socketpair(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.receiver.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.sender.setblocking(False)  # one open file shared by every worker
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        self.receiver.close()
        self.sender.close()


_channel: Channel | None = None


def open_channel() -> Channel:
    """In the master: the relay channel, opened on the first call (before the first fork,
    so that every worker inherits it). OSError when it cannot be opened."""
    global _channel
    if _channel is None or _channel.owner != os.getpid():
        _channel = Channel()
        problems.clear(PROBLEM)
    return _channel


def close_channel() -> None:
    """Close this process's channel (tests; a master's is closed when it exits)."""
    global _channel
    if _channel is not None:
        _channel.close()
        _channel = None


def prepare_channel() -> bool:
    """:func:`open_channel` for a master about to fork its workers: a failure is logged at
    ERROR and shown by ``status``, never raised (the master runs on without the relay)."""
    try:
        open_channel()
        return True
    except OSError as exc:
        report_failure(f"cannot open the channel: {exc.strerror or exc}")
        return False


def report_failure(why: str) -> None:
    message = f"workers' ERROR lines will not be notified: relay {why}"
    log.error("%s", message)
    problems.report(PROBLEM, message)


def encode(record: dict[str, Any]) -> bytes:
    """One log record (``logs.record_dict``) as a compact JSON datagram."""
    out: dict[str, Any] = {}
    for key in _FIELDS:
        value = record.get(key)
        if value is None:
            continue
        if not isinstance(value, _SCALARS):
            value = str(value)
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            value = value[:MAX_FIELD_CHARS] + "\n…(truncated)"
        out[key] = value
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode(data: bytes) -> dict[str, Any] | None:
    """A record sent by :func:`encode`, or None when the datagram is not one."""
    try:
        record = json.loads(data)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("msg"), str):
        return None
    record.setdefault("level", "ERROR")
    record.setdefault("logger", "ssjobs")
    record.setdefault("role", "worker")
    return record


# -- worker side ------------------------------------------------------------------------------

class _Forwarder:
    """An error sink that sends each record through the inherited channel, never blocking."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = self.dropped = 0

    def __call__(self, record: dict[str, Any]) -> None:
        try:
            self.sock.send(encode(record))
            self.sent += 1
        except OSError:  # the queue is full, or the master is gone: drop
            self.dropped += 1


_forwarder: _Forwarder | None = None


def install_worker_forwarder(master_pid: int | None = None) -> bool:
    """In a worker just forked by the master: send this process's ERROR lines to the
    master's relay through the channel it inherited. ``master_pid`` defaults to the parent;
    False (nothing installed) when that master opened no channel before forking us."""
    global _forwarder
    uninstall_worker_forwarder()
    owner = os.getppid() if master_pid is None else master_pid
    if _channel is None or _channel.owner != owner or _channel.sender.fileno() < 0:
        return False
    _forwarder = _Forwarder(_channel.sender)
    logs.add_error_sink(_forwarder)
    return True


def uninstall_worker_forwarder() -> None:
    """Stop forwarding this process's ERROR lines (tests; a re-install does it too)."""
    global _forwarder
    if _forwarder is not None:
        logs.remove_error_sink(_forwarder)
        _forwarder = None


# -- master side ------------------------------------------------------------------------------

class RelayServer:
    """Reads the channel on a background thread and hands each record to ``sink``
    (``ssjobs.notify.error_sink(sender)``). Create it on the master's main thread; ``close``
    it before creating another (reload): the channel stays open for the next one."""

    def __init__(self, sink: Sink) -> None:
        self.channel = open_channel()
        self.sink = sink
        self.received = self.refused = 0
        self._uid = os.getuid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ssjobs-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ancillary = socket.CMSG_SPACE(_UCRED.size)
        sock = self.channel.receiver
        while not self._stop.is_set():
            try:
                data, anc, _flags, _addr = sock.recvmsg(MAX_DATAGRAM_BYTES, ancillary)
            except OSError:
                if self._stop.is_set() or sock.fileno() < 0:
                    return
                continue
            if self._stop.is_set():
                return
            if not self._trusted(anc):
                self.refused += 1
                continue
            record = decode(data)
            if record is None:
                self.refused += 1
                continue
            self.received += 1
            try:
                self.sink(record)
            except Exception:  # noqa: BLE001 - one bad line must not end the relay
                log.debug("relay: sink failed", exc_info=True)

    def _trusted(self, ancillary: list[tuple[int, int, bytes]]) -> bool:
        """Only processes of the master's own user (or root) may send."""
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                _pid, uid, _gid = _UCRED.unpack(data[:_UCRED.size])
                return uid in (self._uid, 0)
        return False

    def close(self) -> None:
        """Stop the thread (waits a moment for it); the channel stays open."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:  # wake the thread out of recvmsg with an empty datagram of our own
            self.channel.sender.send(b"")
        except OSError:
            pass
        self._thread.join(1.0)


def _close_in_child() -> None:
    """After fork: a worker keeps only the sending end (it must never read its siblings'
    lines, nor hold the master's end open)."""
    if _channel is not None:
        _channel.receiver.close()


os.register_at_fork(after_in_child=_close_in_child)
