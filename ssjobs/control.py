"""What the console does to a master: start (daemon or foreground), stop, restart, revive,
reload, status and check. Each command is one function that prints its own messages and
returns the exit status (``EXIT_*`` below); ``ssjobs.cli`` only parses arguments and calls
these.

User mistakes are reported as one line on stderr (``ssjobs: ...``, maybe a ``hint:`` line);
a :class:`~ssjobs.errors.SsjobsError` that escapes is printed the same way by ``cli.main``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import fsguard
from .config import Config, load_config, load_data_dir
from .console.output import fail, report_config_error, say
from .errors import ConfigError, ControlError, SsjobsError
from .logs import DAEMON_OUTPUT_NAME, LOG_FILE_MODE
from .privileges import prepare_dirs
from .runtime import (
    ReadyPipe,
    RuntimeFiles,
    parent_pid,
    pid_alive,
    send_signal,
    unbundled_environ,
)
from .syspath import ISOLATED_FLAGS
from .text import plural

# Exit statuses, the same for every command.
EXIT_OK = 0
EXIT_FAILED = 1          # failed, refused, or already running
EXIT_INVALID = 2         # the config (or the command line) is invalid; `check`: a consumer
                         # or Redis is not usable either
EXIT_NOT_RUNNING = 3     # `status`: no master runs on this data_dir
REDIS_RETRY_S = 0.5      # `start --wait`: how often an unreachable Redis is tried again

READY_TIMEOUT_S = 60.0          # a master reports ready once its first workers are up
                                # (plus stop_timeout: it may wait for a predecessor's workers)
STOP_MARGIN_S = 15.0            # stop waits stop_timeout + this before it SIGKILLs the master
DEFAULT_STOP_TIMEOUT_S = 30.0   # process.stop_timeout's default, when the config is unreadable
ORPHAN_WAIT_S = 5.0             # workers of a SIGKILLed master exit on their own within this
DAEMON_OUTPUT_TAIL_BYTES = 65536      # read back on a failed start to quote its last line
PIPE_WIDTH = 160                # columns of `status` tables written to a pipe or file


def _load(cfg_path: str | os.PathLike) -> Config | None:
    """The full config, or None after printing every error."""
    try:
        return load_config(cfg_path)
    except ConfigError as exc:
        report_config_error(exc)
        return None


# -- start -----------------------------------------------------------------------------------

def start(cfg_path: str | os.PathLike, *, foreground: bool, ready_fd: int | None = None,
          wait: float | None = None) -> int:
    """Start the master: in this process (``foreground``), else as a detached daemon; the
    command returns once the daemon reports ready. ``ready_fd``: the daemon's report pipe
    (then the command that spawned it has checked Redis already). ``wait``: seconds to wait
    for an unreachable Redis before giving up (default: start and let the workers wait)."""
    ready = ReadyPipe.writer(ready_fd)  # a spawned daemon tells `start` why it gives up
    cfg = _load(cfg_path)
    if cfg is None:
        ready.report(False, "invalid config")
        return EXIT_INVALID
    if cfg.log.dir is None and not foreground:
        fail('log.dir is unset or "-" (stderr), and a daemon has no stderr to log to',
             hint="set [log] dir, or run `ssjobs start --foreground` (systemd, docker)")
        return EXIT_INVALID
    files = RuntimeFiles(cfg.process.data_dir)
    try:
        # Before anything is opened as root: no link, nothing another user could change.
        prepare_dirs(cfg.process.data_dir, cfg.log.dir, cfg.process.user)
        files.ensure_dir()
        pid = files.running_pid()
    except SsjobsError as exc:
        ready.report(False, str(exc))
        raise
    if pid:
        ready.report(False, f"already running (pid {pid})")
        print(f"ssjobs already running (pid {pid})", file=sys.stderr, flush=True)
        return EXIT_FAILED
    if ready_fd is None and not (embedded_server_found(cfg) and redis_usable(cfg, wait)):
        return EXIT_FAILED
    if foreground:
        from . import master  # the master and its worker-only dependencies, only here

        return master.serve(cfg, ready_fd=ready_fd)
    return _spawn_daemon(cfg)


def embedded_server_found(cfg: Config) -> bool:
    """url = "embedded" needs a redis-server: False (said why, one line) without one."""
    from .embedded import find_server, missing_server

    if cfg.embedded_redis is None or find_server() is not None:
        return True
    fail(missing_server())
    return False


def redis_usable(cfg: Config, wait: float | None) -> bool:
    """Before starting: False (said why) on a wrong password or missing permission, or on
    a Redis still unreachable after ``wait`` seconds; without ``wait`` an unreachable Redis
    is a warning and the master starts (its workers wait for Redis)."""
    from .redact import redact_url
    from .redisprobe import probe

    urls = list(dict.fromkeys(r.url for r in map(cfg.redis_for, cfg.jobs)
                              if not r.embedded))  # that one the master starts itself
    deadline = time.monotonic() + (wait or 0.0)
    warned = False
    while True:
        found = {url: probe(url) for url in urls}
        permanent = [(u, p) for u, p in found.items() if p.permanent]
        for url, p in permanent:
            fail(f"redis {redact_url(url)}: {p.error.rstrip('.')}; not started",
                 hint="check the password (or ACL user) in redis.url")
        if permanent:
            return False
        down = [(u, p) for u, p in found.items() if not p.ok]
        if not down:
            if warned:
                say("redis is reachable now")
            return True
        url, p = down[0]
        why = f"warning: redis {redact_url(url)}: {p.error.rstrip('.')}"
        if wait is None:
            fail(f"{why}; starting anyway, the workers wait for it (`ssjobs status` shows "
                 "redis: down; `start --wait S` waits instead)")
            return True
        if not warned:
            fail(f"{why}; waiting up to {wait:g}s")
            warned = True
        if time.monotonic() >= deadline:
            fail(f"redis {redact_url(url)} still unreachable after {wait:g}s: not started")
            return False
        time.sleep(REDIS_RETRY_S)


def self_command(*args: str) -> list[str]:
    """argv that runs this ssjobs again: the frozen binary itself, else ``python -I -m
    ssjobs`` (isolated: neither the current directory nor PYTHONPATH on sys.path)."""
    if getattr(sys, "frozen", False):
        return [sys.executable, *args]
    return [sys.executable, *ISOLATED_FLAGS, "-m", "ssjobs", *args]


def daemon_environ() -> dict[str, str]:
    """The environment of a re-executed ssjobs that outlives this process. A one-file
    binary run from its own ``sys.executable`` would by default join THIS instance and use
    its unpacked files, which its bootloader deletes when this command returns;
    PYINSTALLER_RESET_ENVIRONMENT makes it a new instance that unpacks its own copy. The
    library path our bootloader pointed into our copy goes back to what the user had."""
    env = unbundled_environ()
    if getattr(sys, "frozen", False):
        env["PYINSTALLER_RESET_ENVIRONMENT"] = "1"
    return env


def _spawn_daemon(cfg: Config) -> int:
    """Run ``start --foreground`` detached (new session; stdin and stdout on /dev/null,
    stderr appended to log.dir/ssjobs.stderr for what escapes the log: a crash before the
    log is set up, a fatal error) and wait for its ready line. No double fork: a PyInstaller
    one-file binary would lose its unpacked files when the intermediate process exits."""
    assert cfg.log.dir is not None  # start() refuses a daemon without a log.dir
    out_path = Path(cfg.log.dir) / DAEMON_OUTPUT_NAME
    out_fd, out_size = _open_daemon_output(out_path)
    ready = ReadyPipe()
    argv = self_command("start", "--foreground", "--ready-fd", str(ready.write_fd),
                        "-c", str(cfg.path))
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=out_fd, start_new_session=True, env=daemon_environ(),
                                pass_fds=[ready.write_fd], close_fds=True, cwd=cfg.workdir)
    except OSError as exc:
        os.close(ready.read_fd)
        os.close(ready.write_fd)
        fail(f"cannot start the master: {exc}")
        return EXIT_FAILED
    finally:
        if out_fd != subprocess.DEVNULL:
            os.close(out_fd)
    # A master first waits up to stop_timeout for the workers a killed predecessor left.
    ok, message = ready.wait(timeout=READY_TIMEOUT_S + cfg.process.stop_timeout)
    # Reap the child if it already exited; a running daemon is never waited on: it is
    # re-parented to init when this short-lived process exits.
    if not ok:
        try:  # a master that reported a failure exits right after
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            message += f" (pid {proc.pid} is still running: see `ssjobs status`)"
    if ok:
        pid, _, note = message.strip().partition(" ")
        say(f"ssjobs started (pid {pid or proc.pid})" + (
            "; waiting for redis: the workers start once it is reachable" if note else ""))
        return EXIT_OK
    said = _last_line(out_path, out_size)
    fail(f"failed to start: {message}" + (f": {said}" if said and said not in message else ""),
         hint=f"see {Path(cfg.log.dir) / 'ssjobs.log'} and {out_path}, or run "
              "`ssjobs start --foreground`")
    return EXIT_FAILED


def _open_daemon_output(path: Path) -> tuple[int, int]:
    """(fd, size before) of the daemon's output file; /dev/null when it cannot be opened."""
    try:
        fd = fsguard.open_file(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_FILE_MODE)
        return fd, os.fstat(fd).st_size
    except OSError:
        return subprocess.DEVNULL, 0


def _last_line(path: Path, since: int) -> str:
    """The last non-empty line written to ``path`` after offset ``since`` (a traceback's
    last line names the error)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(since, f.seek(0, os.SEEK_END) - DAEMON_OUTPUT_TAIL_BYTES))
            text = f.read(DAEMON_OUTPUT_TAIL_BYTES).decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# -- stop ------------------------------------------------------------------------------------

def stop_timeout_for(cfg_path: str | os.PathLike) -> float:
    """The default `stop --timeout`: the master's own stop_timeout plus a margin (the
    config's rest may be invalid: then process.stop_timeout's default)."""
    try:
        return load_config(cfg_path).process.stop_timeout + STOP_MARGIN_S
    except ConfigError:
        return DEFAULT_STOP_TIMEOUT_S + STOP_MARGIN_S


def stop(data_dir: str | os.PathLike, timeout: float, *, quiet: bool = False) -> int:
    """SIGTERM the master and wait until it, its workers and the lock are gone; SIGKILL the
    master after ``timeout``. 0 when stopped or not running. Then no embedded redis-server
    is left either: a master stops its own; one a killed master left is stopped here."""
    code = _stop_master(data_dir, timeout, quiet=quiet)
    if code == EXIT_OK:
        from .embedded import stop_leftover

        pid = stop_leftover(Path(data_dir))
        if pid is not None and not quiet:
            say(f"stopped the embedded redis-server (pid {pid}) a killed master had left")
    return code


def _stop_master(data_dir: str | os.PathLike, timeout: float, *, quiet: bool = False) -> int:
    files = RuntimeFiles(Path(data_dir))
    pid = files.running_pid()
    if pid is None:
        if files.is_locked():
            fail(f"{files.lock_path} is locked but {files.pid_path} names no process",
                 hint="a master may be starting; try again in a moment")
            return EXIT_FAILED
        if not quiet:
            say("ssjobs is not running")
        return EXIT_OK
    workers = worker_pids(files, pid)
    _signal(pid, signal.SIGTERM)
    alive = _wait_gone(files, [pid, *workers], timeout)
    if not alive:
        if not quiet:
            say(f"ssjobs stopped (pid {pid})")
        return EXIT_OK
    if pid in alive:
        fail(f"master pid {pid} still running after {timeout:.0f}s: sending SIGKILL")
        workers = sorted(set(workers) | set(worker_pids(files, pid)))
        _signal(pid, signal.SIGKILL)
    alive = _wait_gone(files, [pid, *workers], ORPHAN_WAIT_S)
    for worker in alive:
        if worker != pid:
            _signal(worker, signal.SIGKILL)
    alive = _wait_gone(files, alive, ORPHAN_WAIT_S)
    if alive:
        fail(f"processes still alive after SIGKILL: {', '.join(map(str, alive))}")
        return EXIT_FAILED
    if not quiet:
        say(f"ssjobs stopped (pid {pid}, killed)")
    return EXIT_OK


def worker_pids(files: RuntimeFiles, master_pid: int) -> list[int]:
    """Live workers of ``master_pid`` (scoreboard pids whose parent is that master)."""
    from .status import read_scoreboard

    workers, _ = read_scoreboard(files)
    return [w["pid"] for w in workers if parent_pid(w["pid"]) == master_pid]


def _signal(pid: int, sig: int) -> None:
    try:
        send_signal(pid, sig)
    except PermissionError:
        raise ControlError(f"no permission to signal pid {pid} "
                           "(run as the user that started ssjobs, or root)") from None


def _wait_gone(files: RuntimeFiles, pids: list[int], timeout: float) -> list[int]:
    """Wait until ``pids`` are gone and the lock is free; returns what is left (a held lock
    counts as the master, ``pids[0]``, still being there)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if pid_alive(p)]
        if pids and pids[0] not in alive and files.is_locked():
            alive.insert(0, pids[0])
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


# -- restart, revive, reload ----------------------------------------------------------------

def restart(cfg_path: str | os.PathLike, *, stop_timeout: float | None = None) -> int:
    """Stop (if running) then start; an invalid config is refused before anything stops."""
    cfg = _load(cfg_path)
    if cfg is None:
        return EXIT_INVALID
    timeout = cfg.process.stop_timeout + STOP_MARGIN_S if stop_timeout is None else stop_timeout
    if stop(cfg.process.data_dir, timeout) != EXIT_OK:
        return EXIT_FAILED
    return start(cfg_path, foreground=False)


def revive(cfg_path: str | os.PathLike) -> int:
    """Start if not running, else nothing (crontab); needs only data_dir when running."""
    if RuntimeFiles(load_data_dir(cfg_path)).running_pid():
        return EXIT_OK
    return start(cfg_path, foreground=False)


def reload(cfg_path: str | os.PathLike) -> int:
    """Validate the config, SIGHUP the master and wait for the outcome: the master first
    tries one new worker per topic (ssjobs.reloading); a topic whose new worker cannot
    start keeps its running workers and is reported here (exit 1)."""
    from .reloading import wait_result

    try:
        cfg = load_config(cfg_path)
    except ConfigError as exc:
        report_config_error(exc)
        fail("config refused: the running master keeps its current config")
        return EXIT_INVALID
    pid = RuntimeFiles(cfg.process.data_dir).running_pid()
    if pid is None:
        fail("not running", hint="start it with `ssjobs start`")
        return EXIT_FAILED
    since = time.time()
    _signal(pid, signal.SIGHUP)
    say(f"ssjobs reloading (pid {pid}): trying one new worker per topic first")
    outcome = wait_result(cfg.process.data_dir, since, pid)
    if outcome is None:
        fail("the master did not report how the reload went", hint="see the log and "
             "`ssjobs status` (a master older than this ssjobs does not report)")
        return EXIT_FAILED
    if outcome.get("error"):
        fail(f"reload refused: {outcome['error']}")
        return EXIT_FAILED
    refused = outcome.get("refused") or {}
    for topic, why in refused.items():
        fail(f"reload refused for topic {topic!r}: {why}; its running workers keep the old "
             "code and settings")
    topics, replaced = outcome.get("topics", 0), outcome.get("replaced", 0)
    say(f"ssjobs reloaded (pid {pid}): {plural(topics, 'topic')}, replacing "
        f"{plural(replaced, 'worker')} one by one"
        + (f", {plural(len(refused), 'topic')} refused" if refused else ""))
    return EXIT_FAILED if refused else EXIT_OK
