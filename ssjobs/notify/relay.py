"""Forward ERROR log lines from forked workers to the one notifier sender in the master.

The master binds a Unix datagram socket and reads it on a background thread; every worker,
right after fork, installs a log error sink that sends each ERROR record there as one small
JSON datagram. Sending is non-blocking and best effort: a full or missing socket drops the
line (the log file still has it), so a worker never waits on notifications.

The socket lives in Linux's abstract namespace under a name made of the master's pid and
start time. A worker derives it from its parent alone, so even the first workers, forked
before the relay exists, find it once it does; and nothing is left behind in data_dir when
a master is SIGKILLed. Abstract sockets have no file permissions, so the relay asks the
kernel for each sender's credentials (``SO_PASSCRED``) and drops datagrams from other users.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import logs
from ..runtime import proc_stat

log = logging.getLogger(__name__)

MAX_DATAGRAM_BYTES = 64 * 1024  # well under the default socket send buffer (~208 KiB)
MAX_FIELD_CHARS = 16_000  # a message or traceback is cut to this before it is sent
BIND_WAIT_S = 1.0  # how long a rebind waits for just-forked children to drop the name
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_FIELDS = ("time", "level", "pid", "role", "logger", "msg", "exc", "topic", "job_id", "attempt")
_SCALARS = (str, int, float, bool, type(None))

Sink = Callable[[dict[str, Any]], None]


def relay_address(master_pid: int) -> bytes | None:
    """The abstract socket name of ``master_pid``'s relay (None if that process is gone).

    The start time makes the name unique even when masters in separate pid namespaces share
    a network namespace and a pid (containers on the host network, each master pid 1)."""
    fields = proc_stat(master_pid)
    if fields is None:
        return None
    return b"\0ssjobs-notify/%d/%s" % (master_pid, fields[19])  # start time, clock ticks


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
    """An error sink that sends each record to the master's relay, never blocking."""

    def __init__(self, address: bytes) -> None:
        self.address = address
        self.sent = self.dropped = 0
        self.sock = socket.socket(socket.AF_UNIX,
                                  socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)

    def __call__(self, record: dict[str, Any]) -> None:
        try:
            self.sock.sendto(encode(record), self.address)
            self.sent += 1
        except OSError:  # no relay (yet, or log_notify off), or its queue is full: drop
            self.dropped += 1


_forwarder: _Forwarder | None = None


def install_worker_forwarder(master_pid: int | None = None) -> bool:
    """In a worker just forked by the master: send this process's ERROR lines to the
    master's relay. ``master_pid`` defaults to the parent. Creates the worker's own socket
    (nothing is shared with the master across fork); False when there is no master to
    forward to. Lines are dropped silently while the master has no relay running."""
    global _forwarder
    uninstall_worker_forwarder()
    address = relay_address(os.getppid() if master_pid is None else master_pid)
    if address is None:
        return False
    _forwarder = _Forwarder(address)
    logs.add_error_sink(_forwarder)
    return True


def uninstall_worker_forwarder() -> None:
    """Stop forwarding this process's ERROR lines (tests; a re-install does it too)."""
    global _forwarder
    if _forwarder is not None:
        logs.remove_error_sink(_forwarder)
        _forwarder.sock.close()
        _forwarder = None


# -- master side ------------------------------------------------------------------------------

_servers: set[RelayServer] = set()  # open in this process; a forked child closes its copies


class RelayServer:
    """Receives the workers' datagrams on a background thread and hands each record to
    ``sink`` (``ssjobs.notify.error_sink(sender)``). Create it on the master's main thread;
    ``close`` it before creating another (reload)."""

    def __init__(self, sink: Sink) -> None:
        address = relay_address(os.getpid())
        if address is None:
            raise OSError("cannot read this process's start time from /proc")
        self.address = address
        self.sink = sink
        self.received = self.refused = 0
        self._uid = os.getuid()
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._bind(address)
        except OSError:
            self.sock.close()
            raise
        _servers.add(self)
        self._thread = threading.Thread(target=self._run, name="ssjobs-relay", daemon=True)
        self._thread.start()

    def _bind(self, address: bytes) -> None:
        """Bind, waiting a moment if the name is still held: a worker forked just before a
        reload closes its inherited copy right after fork, not at once."""
        deadline = time.monotonic() + BIND_WAIT_S
        while True:
            try:
                self.sock.bind(address)
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def _run(self) -> None:
        ancillary = socket.CMSG_SPACE(_UCRED.size)
        while not self._stop.is_set():
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(MAX_DATAGRAM_BYTES, ancillary)
            except OSError:
                if self._stop.is_set():
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
        """Stop the thread and release the name (waits a moment for the thread)."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:  # wake the thread out of recvmsg
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as waker:
                waker.setblocking(False)
                waker.sendto(b"", self.address)
        except OSError:
            pass
        self._thread.join(1.0)
        self.sock.close()
        _servers.discard(self)


def _close_in_child() -> None:
    """After fork: the child must not hold the master's relay socket (it would keep the
    name bound after the master closed it, and a reload could not bind it again)."""
    for server in list(_servers):
        server.sock.close()
    _servers.clear()


os.register_at_fork(after_in_child=_close_in_child)
