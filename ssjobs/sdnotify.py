"""systemd's readiness protocol (``Type=notify``), without a dependency: one datagram per
state to the socket systemd names in ``$NOTIFY_SOCKET``.

The master sends ``READY=1`` once its workers are up (and again after a reload, which it
announces with ``RELOADING=1``), ``STOPPING=1`` when it begins to stop, and, when the unit
sets ``WatchdogSec``, ``WATCHDOG=1`` from its loop: a wedged master stops sending and
systemd restarts it. :func:`claim` takes the variables out of the environment, so workers
and the programs consumers run do not talk to systemd in the master's name.
"""
from __future__ import annotations

import os
import socket

_address: str | None = None
_watchdog_s: float | None = None


def claim() -> None:
    """In the master at start-up: remember (and unset) NOTIFY_SOCKET and the watchdog."""
    global _address, _watchdog_s
    address = os.environ.pop("NOTIFY_SOCKET", None)
    usec = os.environ.pop("WATCHDOG_USEC", None)
    pid = os.environ.pop("WATCHDOG_PID", None)
    if address:
        _address = address
    if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
        _watchdog_s = int(usec) / 1_000_000


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None without a watchdog."""
    return None if _watchdog_s is None or _address is None else _watchdog_s / 2


def notify(state: str) -> bool:
    """Send ``state`` ("READY=1", ...) to systemd; False when not under systemd (or the
    send failed: readiness is best effort, the service keeps running)."""
    if not _address:
        return False
    target = "\0" + _address[1:] if _address.startswith("@") else _address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), target)
    except OSError:
        return False
    return True


def reset() -> None:
    """Forget what :func:`claim` found (tests)."""
    global _address, _watchdog_s
    _address = _watchdog_s = None
