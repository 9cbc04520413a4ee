"""Files in data_dir: the flock (the authority on "running"), pid file, scoreboard and
status snapshot; their repair after a crash; the readiness pipe of a starting master."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import fsguard
from .errors import ControlError, UnsafePathError

if TYPE_CHECKING:
    from .scoreboard import Scoreboard

LOCK_NAME = "ssjobs.lock"
PID_NAME = "ssjobs.pid"
SCOREBOARD_NAME = "scoreboard.shm"
SNAPSHOT_NAME = "status.json"
DATA_DIR_MODE = 0o700  # pid file, lock, scoreboard, snapshot: nobody else's business
MAX_READ_BYTES = 16 * 1024 * 1024  # a snapshot of 10,000 workers is ~3 MB


def new_nonce() -> str:
    """8 random hex digits: with hostname and pid, a master incarnation's unique name (pids
    repeat: a container's master is always PID 1)."""
    return os.urandom(4).hex()


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` at once: a new file of an unpredictable name in the
    same dir (``mkstemp``: ``O_EXCL``, no link followed), then ``rename`` over the path
    (which replaces a link there, never its target)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_file(path: Path, limit: int = MAX_READ_BYTES) -> bytes:
    """The bytes of a small file in data_dir, never read through a link (``status`` may run
    as root in a dir the service user owns); OSError when missing or unsafe."""
    try:
        fd = fsguard.open_file(path, os.O_RDONLY)
    except UnsafePathError as exc:
        raise OSError(str(exc)) from None
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


class RuntimeFiles:
    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir)
        self.lock_path = self.dir / LOCK_NAME
        self.pid_path = self.dir / PID_NAME
        self.scoreboard_path = self.dir / SCOREBOARD_NAME
        self.snapshot_path = self.dir / SNAPSHOT_NAME
        self._lock_fd: int | None = None

    def ensure_dir(self) -> None:
        try:
            fsguard.make_dirs(self.dir, DATA_DIR_MODE)
        except OSError as exc:
            raise ControlError(f"cannot create data_dir {self.dir}: {exc.strerror}") from None
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise ControlError(f"no permission to write in data_dir {self.dir}")

    # -- the lock ------------------------------------------------------------------------
    def acquire_lock(self) -> bool:
        """Take the exclusive lock (kept until release or exit); False if another holds it."""
        fd = fsguard.open_file(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        self._lock_fd = fd
        return True

    def swap_lock_owner(self, node: str) -> str | None:
        """With the lock held: record ``node`` as its owner in the lock file; returns the
        node the previous master on this data_dir recorded (None if none or unreadable).
        That is how a master finds the in-flight jobs of a SIGKILLed predecessor, whatever
        its pid was (docs/design.md, "Names")."""
        assert self._lock_fd is not None
        try:
            previous = os.pread(self._lock_fd, 4096, 0).decode().strip() or None
        except (OSError, UnicodeDecodeError):
            previous = None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{node}\n".encode(), 0)
        return previous

    @property
    def lock_fd(self) -> int | None:
        return self._lock_fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def is_locked(self) -> bool:
        """True if some process (a running master) holds the lock."""
        try:
            fd = fsguard.open_file(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except PermissionError:
            raise ControlError(f"no permission to read {self.lock_path}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    # -- pid file ------------------------------------------------------------------------
    def write_pid(self, pid: int) -> None:
        write_atomic(self.pid_path, f"{pid}\n".encode())

    def read_pid(self) -> int | None:
        try:
            text = read_file(self.pid_path, 64).decode().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() and int(text) > 0 else None

    def running_pid(self) -> int | None:
        """The master's pid if one runs on this data_dir (the lock says so), else None."""
        if not self.is_locked():
            return None
        for _ in range(50):  # a starting master takes the lock before it writes its pid
            pid = self.read_pid()
            if pid:
                return pid
            time.sleep(0.02)
        return None

    def remove(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    # -- snapshot ------------------------------------------------------------------------
    def write_snapshot(self, status: dict) -> None:
        write_atomic(self.snapshot_path, json.dumps(status, indent=1).encode())

    def read_snapshot(self) -> dict | None:
        try:
            data = json.loads(read_file(self.snapshot_path))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # -- repair --------------------------------------------------------------------------
    def previous_scoreboard(self) -> Scoreboard | None:
        """The scoreboard a SIGKILLed master left, opened before repair() removes its file:
        its slots say where each of that master's workers was in its batch."""
        from .scoreboard import Scoreboard

        if not self.scoreboard_path.exists():
            return None
        try:
            return Scoreboard.open(self.scoreboard_path)
        except (OSError, ValueError):
            return None

    def repair(self) -> list[str]:
        """With the lock held: remove what a crashed master left. Returns what was fixed."""
        fixed = []
        pid = self.read_pid()
        if self.pid_path.exists():
            fixed.append(f"stale pid file ({pid or 'corrupt'}) removed")
            self.remove(self.pid_path)
        if self.scoreboard_path.exists():
            fixed.append("leftover scoreboard removed")
            self.remove(self.scoreboard_path)
        for tmp in self.dir.glob(".*.tmp"):
            self.remove(tmp)
        return fixed


def unbundled_environ() -> dict[str, str]:
    """This process's environment as the user set it: in a one-file binary, without the
    library path its bootloader pointed into the unpacked bundle (what runs from outside
    the bundle, or outlives it, must not load the bundle's libraries)."""
    env = dict(os.environ)
    if getattr(sys, "frozen", False):
        original = env.pop("LD_LIBRARY_PATH_ORIG", None)
        if original is None:
            env.pop("LD_LIBRARY_PATH", None)
        else:
            env["LD_LIBRARY_PATH"] = original
    return env


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name, which may hold spaces and
    parentheses: state is [0], the parent pid [1], the start time in clock ticks [19].
    None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def parent_pid(pid: int) -> int | None:
    fields = proc_stat(pid)
    return int(fields[1]) if fields else None


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of every direct child of ``pid``, zombies ("Z") included."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields and int(fields[1]) == pid:
                found.append((int(entry), fields[0].decode()))
    return found


def process_started_at(pid: int) -> float | None:
    """When ``pid`` started (epoch seconds, to the clock tick); None when it is gone."""
    fields = proc_stat(pid)
    if fields is None:
        return None
    try:
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def is_process(pid: int, started_at: float, slack_s: float = 2.0) -> bool:
    """True if ``pid`` is alive and is the process that started at ``started_at`` (a pid
    from an old scoreboard may since belong to an unrelated process)."""
    begun = process_started_at(pid)
    return begun is not None and pid_alive(pid) and abs(begun - started_at) <= slack_s


def send_signal(pid: int, sig: int) -> bool:
    """Signal ``pid``; False if it is already gone (PermissionError propagates)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = proc_stat(pid)
    return fields is not None and fields[0] != b"Z"


def set_title(title: str) -> None:
    """Process title as ps shows it ("ssjobs: master"); a no-op without setproctitle."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def wait_pids_gone(pids: list[int], timeout: float,
                   while_waiting: Callable[[], Any] | None = None) -> list[int]:
    """Wait until none of ``pids`` is alive, calling ``while_waiting`` now and then; returns
    those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        if while_waiting is not None:
            while_waiting()
        alive = [p for p in alive if pid_alive(p)]
    return alive


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP recorded instead of raised, for the console's live views
    (``top``, ``status --watch``). A handler is installed explicitly, so Ctrl-C works even
    when the shell that started us ignored SIGINT (a job started in the background of a
    non-interactive shell inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler). A wake-up pipe ends a wait at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}
        self._wake_r = self._wake_w = -1
        self._old_wakeup = -1

    def __enter__(self) -> StopSignals:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def _record(self, signum: int, _frame: object) -> None:
        self.received.append(signum)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._old_wakeup)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def wait(self, timeout: float, keys_fd: int | None = None) -> bytes:
        """Sleep up to ``timeout`` seconds; return early with what was typed on ``keys_fd``
        or as soon as a signal came (then ``received`` is not empty); else b"". A closed
        ``keys_fd`` is no longer watched: only signals can end the wait early then."""
        import select

        deadline = time.monotonic() + timeout
        watched = [self._wake_r] + ([keys_fd] if keys_fd is not None else [])
        while not self.received and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(watched, [], [], left)
            if keys_fd is not None and keys_fd in ready:
                data = os.read(keys_fd, 64)
                if data:
                    return data
                watched.remove(keys_fd)  # stdin closed
        return b""


class ReadyPipe:
    """Readiness channel from the daemonized master back to the `start` command."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()

    @classmethod
    def writer(cls, fd: int | None) -> ReadyPipe:
        """The master's end: the write fd it was handed (None: nobody waits, reports are
        dropped)."""
        pipe = cls.__new__(cls)
        pipe.read_fd, pipe.write_fd = -1, (fd if fd is not None else -1)
        return pipe

    def report(self, ok: bool, message: str = "") -> None:
        """In the master: say whether start-up succeeded (once)."""
        if self.write_fd < 0:
            return
        # The reader may be gone, or a bad --ready-fd given: never fail for that.
        try:
            os.write(self.write_fd, (("ok " if ok else "error ") + message + "\n").encode())
        except OSError:
            pass
        try:
            os.close(self.write_fd)
        except OSError:
            pass
        self.write_fd = -1

    def wait(self, timeout: float) -> tuple[bool, str]:
        """In the `start` process: block until the master reports or the pipe closes."""
        import select

        os.close(self.write_fd)
        self.write_fd = -1
        chunks = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, f"master did not report ready within {timeout:.0f}s"
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if not ready:
                continue
            data = os.read(self.read_fd, 4096)
            if not data:
                break
            chunks.append(data)
            if b"\n" in data:
                break
        os.close(self.read_fd)
        line = b"".join(chunks).decode(errors="replace").strip()
        if not line:
            return False, "master exited during start-up (see the log)"
        status, _, message = line.partition(" ")
        return status == "ok", message

