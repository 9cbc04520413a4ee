"""`ssjobs check`: validate the config, import every consumer in a child process, ping every
Redis, and optionally send a test message through the notifier."""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from .config import Config, load_config
from .console.output import fail, report_config_error, say
from .control import EXIT_FAILED, EXIT_INVALID, EXIT_OK
from .errors import ConfigError
from .redisprobe import version_tuple
from .text import plural

if TYPE_CHECKING:
    from .privileges import ServiceUser

CHECK_IMPORT_TIMEOUT_S = 60.0   # importing every consumer must not take longer
REDIS_CHECK_TIMEOUT_S = 3.0     # a healthy Redis answers PING at once
MIN_REDIS_VERSION = (6, 2)      # LMOVE, LPOP with a count (docs/protocol.md)


def check(cfg_path: str | os.PathLike, notify: bool = False) -> int:
    """Validate the config, import every consumer in a child process, ping every Redis;
    with ``notify`` send a test message. 0 ok, 2 invalid, 1 the test message failed."""
    try:
        cfg = load_config(cfg_path)
    except ConfigError as exc:
        report_config_error(exc)
        return EXIT_INVALID
    say(f"config ok: {cfg.path} ({len(cfg.jobs)} topic{'s' if len(cfg.jobs) != 1 else ''})")
    problems = check_consumers(cfg) + check_redis(cfg)
    for line in problems:
        fail(line)
    code = EXIT_INVALID if problems else EXIT_OK
    if notify:
        error = check_notifier(cfg)
        if error:
            fail(error)
            code = code or EXIT_FAILED
    return code


def check_consumers(cfg: Config, timeout: float = CHECK_IMPORT_TIMEOUT_S) -> list[str]:
    """Import (and instantiate, for classes) every consumer in a forked child, as a worker
    would; the console process itself never runs consumer code. Returns error lines."""
    topics: dict[str, list[str]] = {}
    for job in cfg.jobs:
        topics.setdefault(job.consumer, []).append(job.topic)
    for path in cfg.process.consumer_path:
        if not path.is_dir():
            fail(f"warning: process.consumer_path: {path} is not a directory")
    if not cfg.workdir.is_dir():
        fail(f"warning: process.workdir: {cfg.workdir} is not a directory (start fails)")
    from .errors import ControlError
    from .privileges import service_user

    try:
        user = service_user(cfg.process.user)  # run as root: import as the workers would
    except ControlError as exc:
        return [str(exc)]
    results = _import_in_child(cfg, list(topics), timeout, user)
    lines = []
    for spec, names in topics.items():
        where = f"topic{'s' if len(names) > 1 else ''} {', '.join(names)}"
        error = results.get(spec, "was not checked (the check process ended early)")
        if error:
            lines.append(f"{where}: {error}")
        else:
            say(f"consumer ok: {spec} ({where})")
    return lines


def _import_in_child(cfg: Config, specs: list[str], timeout: float,
                     user: ServiceUser | None = None) -> dict[str, str | None]:
    """spec -> None (imported) or the error, from a forked child reporting line by line;
    the child first becomes ``user`` (process.user, when check runs as root)."""
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _import_child(cfg, specs, write_fd, user)
    os.close(write_fd)
    results: dict[str, str | None] = {}
    current = None
    timed_out = False
    with os.fdopen(read_fd, "rb") as pipe:
        deadline = time.monotonic() + timeout
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if not select.select([pipe], [], [], left)[0]:
                continue
            chunk = os.read(pipe.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                event = json.loads(line)
                if event[0] == "begin":
                    current = event[1]
                else:
                    results[event[1]] = event[2]
                    current = None
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, wstatus = os.waitpid(pid, 0)
    if current is not None:
        if timed_out:
            results[current] = f"consumer {current!r}: import did not finish within {timeout:.0f}s"
        elif os.WIFSIGNALED(wstatus):
            name = signal.Signals(os.WTERMSIG(wstatus)).name
            results[current] = f"consumer {current!r}: importing it killed the process ({name})"
        else:
            results[current] = (f"consumer {current!r}: importing it ended the process "
                                f"(exit status {os.waitstatus_to_exitcode(wstatus)})")
    return results


def _import_child(cfg: Config, specs: list[str], write_fd: int,
                  user: ServiceUser | None) -> None:
    """In the forked child: report each import as JSON lines, then leave with os._exit.
    Consumer code is imported only after the switch to ``user``: never as root when the
    workers would not run as root either."""
    try:
        from .loader import add_consumer_path, load_consumer
        from .privileges import become

        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # consumer modules may print; keep check's output clean
            os.dup2(devnull, fd)
        if user is not None:
            try:
                become(user)
            except OSError as exc:
                for spec in specs:
                    _emit(write_fd, ["done", spec, f"consumer {spec!r}: not imported: cannot "
                                                   f"become {user.name}: {exc.strerror}"])
                return
        add_consumer_path(cfg.process.consumer_path)
        try:
            os.chdir(cfg.workdir)  # where the workers import them
        except OSError:
            pass
        for spec in specs:
            _emit(write_fd, ["begin", spec])
            try:
                load_consumer(spec)
                error = None
            except BaseException as exc:  # noqa: BLE001 - SystemExit in a module included
                error = str(exc) if exc.__class__.__name__ == "ConsumerImportError" else \
                    f"consumer {spec!r}: importing it raised {type(exc).__name__}: {exc}"
            _emit(write_fd, ["done", spec, error])
    finally:
        os._exit(0)


def _emit(fd: int, event: list[Any]) -> None:
    data = (json.dumps(event) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def check_redis(cfg: Config, timeout: float = REDIS_CHECK_TIMEOUT_S) -> list[str]:
    """PING every Redis the config names and check its version (error lines returned);
    warn about settings that lose jobs, and about orphan topics (ssjobs.orphans)."""
    from .redact import redact_url
    from .redisprobe import eviction_policies, persistence_off, probe

    users: dict[str, list[str]] = {}
    for job in cfg.jobs:
        users.setdefault(cfg.redis_for(job).url, []).append(job.topic)
    users.setdefault(cfg.redis.url, [])
    lines, not_running = check_embedded(cfg)
    for url, topics in users.items():
        shown = redact_url(url)
        used = f" (topics {', '.join(topics)})" if topics else ""
        if url in not_running:
            continue
        found = probe(url, timeout, details=True)
        if not found.ok:
            lines.append(f"redis {shown}{used}: {found.error}")
            continue
        if version_tuple(found.version)[:2] < MIN_REDIS_VERSION:
            lines.append(f"redis {shown}{used}: version {found.version} is too old "
                         f"(ssjobs needs {'.'.join(map(str, MIN_REDIS_VERSION))} or newer)")
            continue
        say(f"redis ok: {shown} (version {found.version}){used}")
        for policy in sorted(eviction_policies(found) - {"noeviction"}):
            fail(f"warning: redis {shown}: maxmemory-policy is {policy}: when memory runs "
                 "out Redis evicts keys, queued jobs among them (lost jobs); set "
                 "maxmemory-policy noeviction (docs/deploy.md)")
        if persistence_off(found):
            fail(f"warning: redis {shown}: persistence is off (no appendonly, no RDB save): "
                 "a Redis restart loses every queued job; set appendonly yes "
                 "(docs/deploy.md)")
    check_orphans(cfg, timeout)
    return lines


def check_embedded(cfg: Config) -> tuple[list[str], set[str]]:
    """url = "embedded": say which redis-server the master runs, from where, with which
    files. Returns error lines, and the URL not to ping when that server is not running
    (it runs while the master does: `check` before the first `start` is fine)."""
    from .embedded import ServerFiles, describe, find_server, missing_server, server_version

    rcfg = cfg.embedded_redis
    if rcfg is None:
        return [], set()
    binary = find_server()
    if binary is None:
        return [missing_server()], {rcfg.url}
    version = server_version(binary)
    if version is None:
        return [f"redis embedded: {binary.path} does not run (`{binary.path} --version` "
                "failed)"], {rcfg.url}
    if version_tuple(version)[:2] < MIN_REDIS_VERSION:
        return [f"redis embedded: {binary.path} is version {version}, too old (ssjobs needs "
                f"{'.'.join(map(str, MIN_REDIS_VERSION))} or newer)"], {rcfg.url}
    files = ServerFiles(cfg.process.data_dir)
    port = f", and 127.0.0.1:{rcfg.embedded_port}" if rcfg.embedded_port else ""
    say(f"redis embedded: redis-server {version}, {binary.describe()}; the master runs it "
        f"with its data in {files.dir} (append-only file, fsync every second) and its "
        f"socket at {files.socket}{port}")
    running = describe(cfg.process.data_dir, configured=True)
    if running is None or not running.get("running"):
        say("redis embedded: not running now (it runs while the master does): not pinged")
        return [], {rcfg.url}
    return [], set()


def check_orphans(cfg: Config, timeout: float = REDIS_CHECK_TIMEOUT_S) -> dict[str, int]:
    """Warn about every ready list of a topic no config declares and no worker serves."""
    from .broker import connect
    from .orphans import find
    from .redact import redact_url

    known: dict[tuple[str, str], set[str]] = {}
    for job in cfg.jobs:
        rcfg = cfg.redis_for(job)
        known.setdefault((rcfg.url, rcfg.prefix), set()).add(job.topic)
    found: dict[str, int] = {}
    for (url, prefix), topics in known.items():
        try:
            client = connect(url, socket_timeout=timeout, connect_timeout=timeout)
            orphans = find(client, prefix, topics)
            client.close()
        except Exception:  # noqa: BLE001 - reported above as unreachable; nothing to add
            continue
        for topic, backlog in orphans.items():
            fail(f"warning: orphan topic {topic!r} on redis {redact_url(url)}: "
                 f"{plural(backlog, 'job')} in {prefix}:{{{topic}}}:ready, but no topic of "
                 f"this config is called so and no worker serves it (a typo in a push?)")
            found[topic] = backlog
    return found


def check_notifier(cfg: Config) -> str | None:
    """Send one test message through [notifier]; None, or the error line."""
    from .errors import NotifyError
    from .notify import make_notifier, send_test_message

    if cfg.notifier is None:
        return "check --notify: no [notifier] section in the config"
    try:
        notifier = make_notifier(cfg.notifier.kind, cfg.notifier.params)
    except NotifyError as exc:
        return f"notifier: {exc}"
    error = send_test_message(notifier)
    if error:
        return f"notifier {cfg.notifier.kind}: test message failed: {error}"
    say(f"notifier ok: test message sent via {cfg.notifier.kind}")
    return None
