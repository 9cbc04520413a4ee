"""The redis-server a master runs for its host when ``[redis] url = "embedded"``.

The master starts it before anything uses Redis, waits until it answers PING, restarts it
with back-off when it dies, and stops it last: after every worker has exited, every
requeue is done and the heartbeat is withdrawn. It is started after the master drops its
privileges, so it runs as ``process.user`` like the workers (a restart, from the master's
loop, could not run as anyone else), in ``data_dir/redis/`` (0700, that user's).

Its settings are written to ``data_dir/redis/redis.conf`` at every start: an append-only
file fsync'd every second and no RDB snapshots, ``maxmemory-policy noeviction``, a Unix
socket in that directory (mode 700) and no TCP port unless ``embedded_port``. Every process
on the host reaches it through that socket (``ssjobs.config.embedded_url``).

Its pid file, ``data_dir/redis/redis-server.pid`` (the pid, then one JSON line: start time,
binary, settings digest), lets the next master, ``stop`` and ``status`` find a server that a
SIGKILLed master left running: the next master uses it while its settings are unchanged
(else stops it and starts its own), ``stop`` stops it.

Which redis-server: the one the one-file binary carries (build_scripts/ssjobs.spec puts it
in the bundle), else the first on PATH. See docs/deploy.md, "Embedded Redis".
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from . import fsguard, scaling
from .config import EMBEDDED_DIR_NAME, Config, embedded_socket
from .errors import ControlError, UnsafePathError
from .logs import EMBEDDED_REDIS_LOG_NAME, LOG_FILE_MODE
from .runtime import (
    is_process,
    pid_alive,
    process_started_at,
    read_file,
    send_signal,
    unbundled_environ,
    write_atomic,
)
from .text import size

log = logging.getLogger("ssjobs.master")

SERVER = "redis-server"
BUNDLE_DIR = "ssjobs-redis"  # the one-file binary's copy: <bundle>/ssjobs-redis/redis-server
INSTALL_HINT = "apt-get install -y redis-server"
CONF_NAME = "redis.conf"
PID_NAME = "redis-server.pid"
DIR_MODE = 0o700             # the socket and the data: the service user's alone
SERVER_UMASK = 0o077         # what the server creates there (append-only files, temp files)
READY_TIMEOUT_S = 60.0       # start waits this long for PING (a big append-only file loads
                             # meanwhile, answering LOADING); then the workers wait for it
PING_EVERY_S = 0.02
PING_TIMEOUT_S = 1.0
ADOPT_PING_TIMEOUT_S = 2.0   # a leftover server that does not answer within this is replaced
STOP_TIMEOUT_S = 30.0        # SIGTERM: Redis writes and fsyncs its append-only file; then KILL
VERSION_TIMEOUT_S = 10.0     # `redis-server --version`
LOG_TAIL_BYTES = 8192        # read back to quote why a server exited at start
# "123:M 03 Dec 2026 09:06:04.162 # " before each line Redis logs ("#": a warning)
_LOG_PREFIX = re.compile(r"^\d+:[A-Z] \d+ \w+ \d+ [\d:.]+ ([.\-*#]) ")
# Signals a master may ignore or block, which an exec'd program would inherit so.
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT,
                 signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                 signal.SIGCHLD, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)


# -- which redis-server ---------------------------------------------------------------------

class ServerBinary(NamedTuple):
    path: str
    bundled: bool    # the one-file binary's own copy (else: found on PATH)

    def describe(self) -> str:
        return "bundled in this ssjobs binary" if self.bundled else f"{self.path} (PATH)"


def find_server() -> ServerBinary | None:
    """The redis-server an embedded Redis runs: the bundle's, else the first on PATH (in
    its absolute directories)."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        path = os.path.join(bundle, BUNDLE_DIR, SERVER)
        if os.access(path, os.X_OK):
            return ServerBinary(path, True)
    # absolute PATH entries only: "" or "." would run a redis-server from the current dir
    search = os.pathsep.join(p for p in os.environ.get("PATH", os.defpath).split(os.pathsep)
                             if os.path.isabs(p))
    found = shutil.which(SERVER, path=search)
    return ServerBinary(found, False) if found else None


def missing_server() -> str:
    """The one line that says there is no redis-server and how to get one."""
    return (f'redis.url = "embedded" needs {SERVER}, and there is none on PATH: install it '
            f"with `{INSTALL_HINT}` (or use the one-file ssjobs binary, which carries one)")


def server_environ(binary: ServerBinary) -> dict[str, str]:
    """The bundle's copy loads the libraries bundled with it (the bootloader's library
    path); one from PATH gets the user's environment."""
    env = unbundled_environ()
    if binary.bundled:
        env["LD_LIBRARY_PATH"] = str(getattr(sys, "_MEIPASS", ""))
    return env


def server_version(binary: ServerBinary) -> str | None:
    """``7.0.15``, from ``redis-server --version``; None when it does not run."""
    try:
        done = subprocess.run([binary.path, "--version"], capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT_S, env=server_environ(binary))
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\bv=(\S+)", done.stdout)
    return found[1] if found and done.returncode == 0 else None


def version_note() -> str:
    """For ``ssjobs --version``: which redis-server an embedded Redis would run."""
    binary = find_server()
    if binary is None:
        return f"{SERVER}: none on PATH"
    version = server_version(binary) or "?"
    return f"{SERVER} {version} " + ("bundled" if binary.bundled else f"from {binary.path}")


# -- its files ------------------------------------------------------------------------------

class ServerFiles:
    """``data_dir/redis/``: settings, pid file, socket and the append-only files."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / EMBEDDED_DIR_NAME
        self.socket = embedded_socket(data_dir)
        self.conf = self.dir / CONF_NAME
        self.pid_path = self.dir / PID_NAME

    def make_dir(self) -> None:
        """Create the directory (0700) or make an existing one 0700; refuse a link, or one
        that another user owns (the server runs as the user this process is)."""
        try:
            fsguard.make_dirs(self.dir, DIR_MODE)
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | fsguard.NOFOLLOW)
        except OSError as exc:
            raise ControlError(f"cannot create {self.dir}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                raise UnsafePathError(f"{self.dir} belongs to uid {st.st_uid}, not to the "
                                      f"user the master runs as (uid {os.geteuid()}): chown it")
            if stat.S_IMODE(st.st_mode) != DIR_MODE:
                os.fchmod(fd, DIR_MODE)
        finally:
            os.close(fd)


class Recorded(NamedTuple):
    """What the pid file says about a server."""

    pid: int
    started_at: float
    settings: str = ""       # digest of the redis.conf it was started with
    binary: str = ""
    bundled: bool = False
    version: str = ""
    port: int = 0
    restarts: int = 0

    def alive(self, files: ServerFiles) -> bool:
        """It still runs (not a newer process that got its pid) and is the redis-server
        working in ``files.dir``."""
        return is_process(self.pid, self.started_at) and _serves(self.pid, files)


def read_pid_file(files: ServerFiles) -> Recorded | None:
    try:
        text = read_file(files.pid_path, 8192).decode()
        first, _, rest = text.partition("\n")
        info = json.loads(rest or "{}")
        return Recorded(int(first), float(info.get("started_at") or 0.0),
                        str(info.get("settings", "")), str(info.get("binary", "")),
                        bool(info.get("bundled")), str(info.get("version", "")),
                        int(info.get("port") or 0), int(info.get("restarts") or 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _serves(pid: int, files: ServerFiles) -> bool:
    """``pid`` is a redis-server (its command name: /proc/PID/exe may be a Debian link's
    target, or deleted with the bundle of a master gone) working in ``files.dir`` (Redis
    changes into its ``dir``)."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            comm = f.read().strip().decode(errors="replace")
        return comm.startswith(SERVER) and \
            os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(files.dir)
    except OSError:
        return False


def serving(files: ServerFiles) -> list[int]:
    """Every redis-server working in ``files.dir``, whatever the pid file says (it may be
    lost): two servers appending to one file would corrupt it."""
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and _serves(int(entry), files)]


def find_leftover(data_dir: Path) -> Recorded | None:
    """A live redis-server on ``data_dir`` that no master runs any more (a killed one left
    it), from its pid file; or, when that is gone, found working in its directory."""
    files = ServerFiles(data_dir)
    recorded = read_pid_file(files)
    if recorded is not None and recorded.alive(files):
        return recorded
    if not files.dir.is_dir():
        return None
    for pid in serving(files):
        return Recorded(pid, process_started_at(pid) or 0.0)
    return None


def stop_leftover(data_dir: Path, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """For ``ssjobs stop`` when no master runs: stop the server a killed master left; its
    pid, or None when there was none."""
    files = ServerFiles(data_dir)
    found = find_leftover(data_dir)
    if found is not None:
        try:
            terminate(found.pid, timeout)
        except PermissionError:
            raise ControlError(f"no permission to stop the embedded redis-server (pid "
                               f"{found.pid}): run as the user that started ssjobs, or root"
                               ) from None
    _remove(files.pid_path)
    return found.pid if found is not None else None


def terminate(pid: int, timeout: float, reap: bool = False) -> bool:
    """SIGTERM (Redis writes out and fsyncs its append-only file), SIGKILL after
    ``timeout``; wait until gone (``reap``: it is our child). True if it had to be killed."""
    send_signal(pid, signal.SIGTERM)
    if _wait_exit(pid, timeout, reap):
        return False
    log.warning("embedded redis-server (pid %d) did not stop within %.0fs: killing it",
                pid, timeout)
    send_signal(pid, signal.SIGKILL)
    _wait_exit(pid, 10.0, reap)
    return True


def _wait_exit(pid: int, timeout: float, reap: bool) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reap:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return True
            except ChildProcessError:
                return True
        elif not pid_alive(pid):
            return True
        time.sleep(0.02)
    return False


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# -- its settings ---------------------------------------------------------------------------

def _quote(value: str) -> str:
    """A redis.conf string: double quotes, with backslash escapes for what needs them."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def server_conf(files: ServerFiles, port: int, log_file: Path | None) -> str:
    """The whole redis.conf of an embedded server."""
    lines = [
        "# Written by ssjobs (ssjobs/embedded.py) at every start of the master:",
        "# edits here are lost. See docs/deploy.md, \"Embedded Redis\".",
        "daemonize no",
        f"port {port}",
        *(["bind 127.0.0.1 -::1"] if port else []),  # loopback only; "-": if there is one
        f"unixsocket {_quote(str(files.socket))}",
        "unixsocketperm 700",
        f"dir {_quote(str(files.dir))}",
        # every write reaches the file before its reply; fsync'd once a second
        "appendonly yes",
        "appendfsync everysec",
        'appendfilename "appendonly.aof"',
        'save ""',                     # no RDB snapshots: the append-only file is the data
        "maxmemory-policy noeviction",  # when memory runs out, refuse writes; never drop jobs
        "logfile " + (_quote(str(log_file)) if log_file else '""'),  # "": stdout
        "loglevel notice",
        "always-show-logo no",
    ]
    return "\n".join(lines) + "\n"


def _digest(conf: str) -> str:
    return hashlib.sha256(conf.encode()).hexdigest()[:16]


# -- the master's server ------------------------------------------------------------------

class EmbeddedRedis:
    """The master's redis-server: the first child it starts, the last it stops."""

    def __init__(self, cfg: Config) -> None:
        rcfg = cfg.embedded_redis
        assert rcfg is not None
        self.files = ServerFiles(cfg.process.data_dir)
        self.port = rcfg.embedded_port
        self.log_file = Path(cfg.log.dir) / EMBEDDED_REDIS_LOG_NAME if cfg.log.dir else None
        self.conf = server_conf(self.files, self.port, self.log_file)
        self.binary: ServerBinary | None = None
        self.version = ""
        self.pid: int | None = None
        self.child = False          # ours to reap; False: adopted from a killed master
        self.started_at = 0.0       # epoch, of the process (pid reuse)
        self.started_mono = 0.0
        self.crashes = 0            # quick exits in a row
        self.restart_at: float | None = None
        self.restarts = 0
        self.stopping = False

    @classmethod
    def for_config(cls, cfg: Config) -> EmbeddedRedis | None:
        return cls(cfg) if cfg.embedded_redis is not None else None

    # -- start ------------------------------------------------------------------------
    def start(self) -> None:
        """Use the server a killed master left, or start one, and wait until it answers.
        ControlError when it cannot run (no redis-server, one that exits at start)."""
        self.binary = find_server()
        if self.binary is None:
            raise ControlError(missing_server())
        self.version = server_version(self.binary) or ""
        self.files.make_dir()
        if self._adopt():
            return
        offset = self._log_size()
        self._spawn()
        self._wait_ready(offset)

    def _adopt(self) -> bool:
        """True when a leftover server with these very settings answers: it is ours now
        (the workers of a killed master may still be settling through it). A leftover
        with other settings, or that does not answer, is stopped."""
        found = find_leftover(self.files.dir.parent)
        if found is None:
            return False
        if found.settings == _digest(self.conf) and \
                _ping(self.files.socket, ADOPT_PING_TIMEOUT_S) in ("ok", "loading"):
            self.pid, self.child, self.started_at = found.pid, False, found.started_at
            self.started_mono = time.monotonic()
            log.warning("embedded redis-server (pid %d) left running by the previous master: "
                        "using it", found.pid)
            self._write_pid_file()
            return True
        why = "its settings changed" if found.settings else "it has no pid file"
        if found.settings == _digest(self.conf):
            why = "it does not answer"
        log.warning("stopping the redis-server (pid %d) the previous master left (%s)",
                    found.pid, why)
        try:
            terminate(found.pid, STOP_TIMEOUT_S)
        except PermissionError:
            raise ControlError(f"a redis-server (pid {found.pid}) runs in {self.files.dir} as "
                               "another user: stop it first") from None
        return False

    def _spawn(self) -> None:
        """Start the server (it needs no waiting for: a restart lets the loop run on, and
        the workers reconnect by themselves)."""
        assert self.binary is not None
        write_atomic(self.files.conf, self.conf.encode(), 0o600)
        out = self._open_log()
        actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
        # early errors (a bad setting) go where its log goes; without a log.dir, to stderr
        actions += [(os.POSIX_SPAWN_DUP2, out if out is not None else 2, 1)]
        if out is not None:
            actions += [(os.POSIX_SPAWN_DUP2, out, 2)]
        umask = os.umask(SERVER_UMASK)  # inherited: its files are its user's alone
        try:
            # its own session: a Ctrl-C meant for a foreground master does not reach it
            pid = os.posix_spawn(self.binary.path, [self.binary.path, str(self.files.conf)],
                                 server_environ(self.binary), file_actions=actions,
                                 setsid=True, setsigmask=(), setsigdef=RESET_SIGNALS)
        finally:
            os.umask(umask)
            if out is not None:
                os.close(out)
        self.pid, self.child = pid, True
        self.started_at = process_started_at(pid) or time.time()
        self.started_mono = time.monotonic()
        self._write_pid_file()
        log.info("embedded redis-server %s started (pid %d, %s; socket %s%s)", self.version,
                 pid, self.binary.describe(), self.files.socket,
                 f", port {self.port}" if self.port else "")

    def _open_log(self) -> int | None:
        """The log file, made now with ssjobs' mode (not what the umask leaves)."""
        if self.log_file is None:
            return None
        return fsguard.open_file(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                 LOG_FILE_MODE)

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size if self.log_file else 0
        except OSError:
            return 0

    def _wait_ready(self, log_offset: int) -> None:
        assert self.pid is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        state = "down"
        while time.monotonic() < deadline:
            state = _ping(self.files.socket, PING_TIMEOUT_S)
            if state == "ok":
                return
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.pid = None
                _remove(self.files.pid_path)
                said = self._log_tail(log_offset)
                raise ControlError(f"the embedded redis-server exited at start "
                                   f"({_exit_reason(status)})" + (f": {said}" if said else "")
                                   + (f" (see {self.log_file})" if self.log_file else ""))
            time.sleep(PING_EVERY_S)
        log.warning("embedded redis-server (pid %d) does not answer yet (%s) after %.0fs; "
                    "the workers wait for it", self.pid, state, READY_TIMEOUT_S)

    def _log_tail(self, offset: int) -> str:
        """Why the server gave up: its last warnings logged since ``offset`` (Redis marks
        them "#"), without their pid and time; else its last line."""
        if self.log_file is None:
            return ""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(max(offset, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        lines, warned = [], []
        for line in filter(str.strip, text.splitlines()):
            found = _LOG_PREFIX.match(line)
            lines.append(line[found.end():].strip() if found else line.strip())
            if found and found[1] == "#":
                warned.append(lines[-1])
        return "; ".join(warned[-2:]) if warned else lines[-1] if lines else ""

    def _write_pid_file(self) -> None:
        assert self.pid is not None and self.binary is not None
        info = {"started_at": self.started_at, "settings": _digest(self.conf),
                "binary": self.binary.path, "bundled": self.binary.bundled,
                "version": self.version, "port": self.port, "restarts": self.restarts,
                "master": os.getpid()}
        write_atomic(self.files.pid_path, f"{self.pid}\n{json.dumps(info)}\n".encode())

    # -- while the master runs ----------------------------------------------------------
    def reaped(self, pid: int, status: int) -> bool:
        """The master reaped ``pid``: True if it was this server (then a restart is due,
        at once the first time, with back-off while it keeps dying young)."""
        if pid != self.pid or not self.child:
            return False
        self.pid = None
        if self.stopping:
            return True
        self._schedule_restart(f"exited: {_exit_reason(status)}")
        return True

    def _schedule_restart(self, what: str) -> None:
        lived = time.monotonic() - self.started_mono
        self.crashes = self.crashes + 1 if lived < scaling.HEALTHY_LIFETIME_S else 1
        delay = scaling.crash_backoff(self.crashes - 1)
        self.restart_at = time.monotonic() + delay
        log.error("embedded redis-server %s; restarting it%s (the workers wait for it)", what,
                  f" in {delay:.1f}s" if delay else "")

    def tend(self) -> None:
        """From the master's loop: restart a dead server once its back-off is over, and
        notice when an adopted one (not our child: never reaped) is gone."""
        if self.stopping:
            return
        if self.pid is not None and not self.child and not is_process(self.pid,
                                                                      self.started_at):
            pid, self.pid = self.pid, None
            self._schedule_restart(f"(pid {pid}, the previous master's) is gone")
        if self.pid is None and self.restart_at is not None and \
                time.monotonic() >= self.restart_at:
            self.restart_at = None
            self.restarts += 1
            try:
                self._spawn()
            except OSError as exc:
                self.started_mono = time.monotonic()
                self._schedule_restart(f"could not be started ({exc})")

    # -- stop ---------------------------------------------------------------------------
    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the server for good (the master's very last step before its lock)."""
        self.stopping = True
        pid, self.pid = self.pid, None
        if pid is not None:
            killed = terminate(pid, timeout, reap=self.child)
            log.info("embedded redis-server (pid %d) %s", pid,
                     "killed" if killed else "stopped")
        _remove(self.files.pid_path)


def _exit_reason(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def _client(socket_path: Path, timeout: float) -> Any:
    """A client of the server's socket that tries once (redis-py's default retries with
    back-off would make every "is it up?" take seconds)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(unix_socket_path=str(socket_path), socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))


def _ping(socket_path: Path, timeout: float) -> str:
    """"ok", "loading" (it answers, still reading its append-only file) or "down"."""
    import redis

    client = _client(socket_path, timeout)
    try:
        client.ping()
        return "ok"
    except redis.BusyLoadingError:
        return "loading"
    except redis.RedisError:  # refused, no socket, timed out: redis-py wraps them all
        return "down"
    finally:
        client.close()


# -- for status ---------------------------------------------------------------------------

def describe(data_dir: Path, *, configured: bool, timeout: float = 1.0) -> dict | None:
    """``status --json``'s ``embedded_redis``: None when this data_dir has no embedded server
    and the config names none."""
    files = ServerFiles(data_dir)
    recorded = read_pid_file(files)
    if recorded is None or not recorded.alive(files):
        leftover = find_leftover(data_dir) if recorded is not None else None
        if leftover is None:
            return {"running": False, "socket": str(files.socket)} if configured else None
        recorded = leftover
    info: dict[str, Any] = {
        "running": True, "pid": recorded.pid, "socket": str(files.socket),
        "port": recorded.port or None, "version": recorded.version or None,
        "binary": recorded.binary or None, "bundled": recorded.bundled,
        "restarts": recorded.restarts, "rss_bytes": _rss(recorded.pid)}
    import redis

    client = _client(files.socket, timeout)
    try:
        memory = client.info("memory")
        info["used_memory"] = int(memory.get("used_memory", 0))
    except redis.RedisError as exc:
        info["error"] = str(exc) or type(exc).__name__
    finally:
        client.close()
    return info


def _rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def status_line(info: dict, master_running: bool) -> str:
    """One line of ``ssjobs status`` about the embedded server."""
    if not info.get("running"):
        return ("redis: embedded redis-server not running: the master restarts it"
                if master_running else "redis: embedded (runs while the master does)")
    used = info.get("used_memory")
    memory = (f", {size(used)} used" if used is not None else "") + (
        f", rss {size(info['rss_bytes'])}" if info.get("rss_bytes") else "")
    where = f"socket {info['socket']}" + (f", port {info['port']}" if info.get("port") else "")
    line = (f"redis: embedded redis-server {info.get('version') or ''} (pid {info['pid']}"
            f"{', bundled' if info.get('bundled') else ''}), {where}{memory}").replace("  ", " ")
    if info.get("restarts"):
        line += f", restarted {info['restarts']}x"
    if info.get("error"):
        line += f"; not answering: {info['error']}"
    if not master_running:
        line += ("; no master runs (a killed one left it): the next start uses it, "
                 "`ssjobs stop` stops it")
    return line


__all__ = ["EmbeddedRedis", "ServerBinary", "describe", "find_leftover", "find_server",
           "missing_server", "server_version", "serving", "status_line", "stop_leftover",
           "version_note"]
