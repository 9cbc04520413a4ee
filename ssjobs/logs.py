"""Logging for master and workers: one shared ``ssjobs.log``, text or JSON lines.

Each process appends through its own ``O_APPEND`` descriptor with ONE ``os.write`` per record
(traceback included), so lines never interleave. Only the master rotates (rotate_if_due); the
others see the move by comparing inodes of path and descriptor, at most once a second.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import fsguard
from .errors import ConfigError, SsjobsError, UnsafePathError
from .importing import import_spec
from .redact import redact
from .rules import LOG_FORMATS, LOG_LEVELS, rotation

LOG_FILE_NAME = "ssjobs.log"
DAEMON_OUTPUT_NAME = "ssjobs.stderr"  # what a daemonized master writes to stderr
EMBEDDED_REDIS_LOG_NAME = "ssjobs-redis.log"  # the log of an embedded redis-server
LOG_FILE_MODE = 0o640  # tracebacks and payload fragments: not for every local user
LOG_DIR_MODE = 0o750
INODE_CHECK_INTERVAL_S = 1.0  # how long a moved file may stay in use: one stat() a second
_ROTATED_RE = re.compile(re.escape(LOG_FILE_NAME) + r"\.(\d{8}-\d{6})(?:\.(\d+))?$")
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = {*vars(logging.LogRecord("", 0, "", 0, "", None, None)), "message", "asctime"}

_role = "master"
_state: dict[str, Any] = {"handlers": [], "saved": [], "file": None, "rotate": None}
_sinks: list[tuple[int, Callable[[dict[str, Any]], None]]] = []  # (pid that added it, sink)


def is_log_file(name: str) -> bool:
    """True for the names ssjobs writes in log.dir (the log, its rotated copies, the
    daemon's stderr, the embedded redis-server's log): the only entries of a shared
    log.dir it checks or hands over."""
    return name.startswith(LOG_FILE_NAME) or name in (DAEMON_OUTPUT_NAME,
                                                       EMBEDDED_REDIS_LOG_NAME)


def set_role(role: str) -> None:
    """Set the role shown on every line of this process ("worker mail.send #2")."""
    global _role
    _role = role


def record_dict(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of one record as JSON-ready values (also what error sinks receive)."""
    out: dict[str, Any] = {
        "time": record.created,
        "ts": _dt.datetime.fromtimestamp(record.created).astimezone()
        .isoformat(timespec="milliseconds"),
        "level": record.levelname, "pid": os.getpid(), "role": _role,
        "logger": record.name, "msg": redact(record.getMessage()),
    }
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if exc := "\n".join(p for p in (record.exc_text, record.stack_info) if p):
        out["exc"] = redact(exc)
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS and key not in out and not key.startswith("_"):
            out[key] = value
    return out


class TextFormatter(logging.Formatter):
    """``2026-11-26 17:40:01.123 ERROR [1234] worker mail.send #2: message`` (+ traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_dict(record)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        line = (f"{stamp}.{int(record.msecs):03d} {record.levelname} [{fields['pid']}] "
                f"{fields['role']}: {fields['msg']}")
        return f"{line}\n{fields['exc']}" if "exc" in fields else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; newlines inside the message are escaped by JSON."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_dict(record), ensure_ascii=False, default=str)


class SharedFileHandler(logging.Handler):
    """Appends whole records to a file shared by many processes; reopens it when moved."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._fd, self._checked_at, self.reopen_requested = -1, 0.0, False
        self._open()

    def _open(self) -> None:
        # Never through a link: the master opens it as root, in a dir its service user owns.
        fd = fsguard.open_file(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE)
        try:
            if os.fstat(fd).st_mode & 0o777 & ~LOG_FILE_MODE:  # made 0644 by an older ssjobs
                os.fchmod(fd, LOG_FILE_MODE)
        except OSError:  # not ours to change (a worker reopening root's file): keep it
            pass
        old, self._fd = self._fd, fd
        self._checked_at, self.reopen_requested = time.monotonic(), False
        if old >= 0:
            os.close(old)

    def reopen(self) -> None:
        """Open the path afresh (after logrotate moved the file away)."""
        with self.lock:  # type: ignore[union-attr]
            self._open()

    def stat(self) -> os.stat_result:
        return os.fstat(self._fd)

    def _moved(self) -> bool:
        try:
            on_disk, ours = os.stat(self.path), self.stat()
        except FileNotFoundError:
            return True
        return (on_disk.st_ino, on_disk.st_dev) != (ours.st_ino, ours.st_dev)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            now = time.monotonic()
            if self.reopen_requested or now - self._checked_at >= INODE_CHECK_INTERVAL_S:
                self._checked_at = now
                if self.reopen_requested or self._moved():
                    self._open()
            while data:  # one write; a second only after a short write (disk full)
                data = data[os.write(self._fd, data):]
        except Exception:  # noqa: BLE001 - a log call must never raise; report on stderr
            self.handleError(record)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)
        super().close()


class StderrHandler(logging.Handler):
    """Writes each record to fd 2 with one ``os.write``: master and workers share that fd
    (journald, ``docker logs``), and a traceback then never interleaves with another
    process's line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(2, data):]
        except Exception:  # noqa: BLE001 - a log call must never raise
            self.handleError(record)


class _SinkHandler(logging.Handler):
    """Hands every ERROR+ record, as a dict, to the registered sinks."""

    _busy = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._busy, "on", False):  # a sink that logs an error must not loop
            return
        self._busy.on = True
        try:
            fields = record_dict(record)
            for sink in [sink for pid, sink in _sinks if pid == os.getpid()]:
                try:
                    sink(fields)
                except Exception:  # noqa: BLE001 - a broken sink must not break logging
                    self.handleError(record)
        finally:
            self._busy.on = False


_sink_handler = _SinkHandler(logging.ERROR)


def add_error_sink(sink: Callable[[dict[str, Any]], None]) -> None:
    """Call ``sink(record_dict)`` for every ERROR+ record logged by this process (a forked
    child does not call its parent's sinks)."""
    _sinks.append((os.getpid(), sink))
    logging.getLogger("ssjobs").addHandler(_sink_handler)  # once: addHandler skips repeats


def remove_error_sink(sink: Callable[[dict[str, Any]], None]) -> None:
    _sinks[:] = [entry for entry in _sinks if entry[1] is not sink]


def parse_rotate(rotate: str) -> str | int | None:
    """``log.rotate`` as ``rules.rotation`` reads it; ConfigError for a bad value."""
    try:
        return rotation(rotate)
    except ValueError as exc:
        raise ConfigError(f"log.rotate: {exc}") from None


def _load_handler(spec: str) -> logging.Handler:
    try:
        cls = import_spec(spec)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"log.class: cannot import {spec!r}: {e}") from e
    if isinstance(cls, type) and issubclass(cls, logging.Handler):
        return cls()
    raise ConfigError(f"log.class: {spec!r} is not a logging.Handler subclass")


def setup_logging(log_dir: Path | None, *, level: str = "info", fmt: str = "text",
                  role: str = "master", rotate: str = "", keep: int = 14,
                  handler_class: str | None = None, stream: Any = None,
                  capture_root: bool = False) -> None:
    """Configure the "ssjobs" logger; with ``capture_root`` also the root logger, so the
    consumers' own loggers land in the same file. Calling it again replaces the setup."""
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log.level: expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    if fmt not in LOG_FORMATS:
        raise ConfigError(f'log.format: expected "text" or "json", got {fmt!r}')
    rotation = parse_rotate(rotate)
    extra = [_load_handler(handler_class)] if handler_class else []
    file_handler = None
    if log_dir is not None:
        try:
            fsguard.make_dirs(Path(log_dir), LOG_DIR_MODE)
            file_handler = SharedFileHandler(Path(log_dir) / LOG_FILE_NAME)
        except UnsafePathError as e:
            raise UnsafePathError(f"cannot open the log file: {e}") from None
        except OSError as e:
            raise SsjobsError(f"cannot open the log file in {log_dir}: {e.strerror or e}") from e
    if file_handler is not None:
        main: logging.Handler = file_handler
    else:
        main = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    handlers: list[logging.Handler] = [main, *extra]
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    for handler in handlers:
        if handler.formatter is None:
            handler.setFormatter(formatter)

    reset_logging()
    set_role(role)
    targets = [logging.getLogger("ssjobs")] + ([logging.getLogger()] if capture_root else [])
    _state["saved"] = [(logger, logger.level, logger.propagate) for logger in targets]
    for logger in targets:
        logger.setLevel(level.upper())
        for handler in [*handlers, _sink_handler]:
            logger.addHandler(handler)
    targets[0].propagate = not capture_root
    st = file_handler.stat() if file_handler else None  # a file already there: its day
    day = _dt.date.fromtimestamp(st.st_mtime) if st and st.st_size else _dt.date.today()
    _state.update(handlers=handlers, file=file_handler, rotate=rotation, keep=max(keep, 0),
                  day=day)


def reset_logging() -> None:
    """Undo :func:`setup_logging`: close its handlers, restore the loggers it changed."""
    for logger, level, propagate in _state["saved"]:
        logger.setLevel(level)
        logger.propagate = propagate
        for handler in [*_state["handlers"], _sink_handler]:
            logger.removeHandler(handler)
    for handler in _state["handlers"]:
        handler.close()
    _state.update(handlers=[], saved=[], file=None, rotate=None)


def reopen_logs() -> None:
    """Reopen the log file at the next record (SIGUSR1): sets a flag, safe in a signal handler."""
    if _state["file"] is not None:
        _state["file"].reopen_requested = True


def rotate_if_due(now: float | None = None) -> Path | None:
    """Master only: rotate ``ssjobs.log`` once past its size or day, then prune old files;
    return the rotated file's new path, or None when nothing was due."""
    handler: SharedFileHandler | None = _state["file"]
    if handler is None or (rotation := _state["rotate"]) is None:
        return None
    now = time.time() if now is None else now
    today, size = _dt.date.fromtimestamp(now), handler.stat().st_size
    if size == 0 or (today == _state["day"] if rotation == "daily" else size < rotation):
        return None
    path = handler.path
    rotated = [((m.group(1), int(m.group(2) or 0)), entry) for entry in path.parent.iterdir()
               if (m := _ROTATED_RE.match(entry.name))]
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    serial = max((key[1] + 1 for key, _ in rotated if key[0] == stamp), default=0)
    target = path.with_name(f"{path.name}.{stamp}" + (f".{serial}" if serial else ""))
    moved = True
    try:
        os.rename(path, target)
        rotated.append(((stamp, serial), target))
    except FileNotFoundError:  # logrotate moved it first
        moved = False
    handler.reopen()
    _state["day"] = today
    rotated.sort()
    for _, old in rotated[:max(len(rotated) - _state["keep"], 0)]:
        old.unlink(missing_ok=True)
    return target if moved else None


class OutageLogger:
    """Logs an outage once when it begins and once when it ends, not once per retry."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("ssjobs.outage")
        self._outages: dict[str, list[float]] = {}  # key -> [started_at, failures]

    def note_failure(self, key: str, exc: BaseException) -> bool:
        """Count one failure; log a WARNING only when it starts an outage (then True)."""
        outage = self._outages.setdefault(key, [time.monotonic(), 0])  # atomic: one starts it
        outage[1] += 1
        if outage[1] == 1:
            self.log.warning("%r unavailable: %s: %s (not logged again until it recovers)",
                             key, type(exc).__name__, exc)
        return outage[1] == 1

    def down_for(self, key: str, now: float | None = None) -> float | None:
        """Seconds since the outage of ``key`` began (``now`` is monotonic); None when up."""
        outage = self._outages.get(key)
        if outage is None:
            return None
        return max((time.monotonic() if now is None else now) - outage[0], 0.0)

    def note_success(self, key: str) -> bool:
        """End the outage of ``key`` if there is one: log its duration and failure count."""
        if (outage := self._outages.pop(key, None)) is not None:
            self.log.info("%r recovered after %.1f s (%d failures)", key,
                          time.monotonic() - outage[0], outage[1])
        return outage is not None
