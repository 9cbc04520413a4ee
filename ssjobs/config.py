"""TOML config → frozen dataclasses, with every error reported at once.

Each setting is declared once, as a dataclass field made by :func:`setting` (TOML key, type
from the annotation, default, rule, one-line doc). Loading, validation, error messages and
``config_example.toml`` (:func:`render_example`) all come from those declarations.
Errors read ``jobs[1].static_workers (line 42): must be between 1 and 1024, got 0``.
"""
from __future__ import annotations

import difflib
import json
import keyword
import math
import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple
from urllib.parse import urlsplit

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import ConfigError

CONFIG_ENV = "SSJOBS_CONFIG"
DEFAULT_CONFIG_NAME = "ssjobs.toml"
NOTIFIER_KINDS = ("dingtalk", "webhook", "slack", "feishu", "wecom")
MAX_TOPIC_BYTES = 64  # topics are embedded in every Redis key name; keep keys short


# -- rules: a hint for the docs and a test returning an error message (None when fine) ------

class Rule(NamedTuple):
    hint: str
    test: Callable[[Any], "str | None"]


def _num(v: float) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else repr(v)


def _show(s: str) -> str:
    return json.dumps(s if len(s) <= 60 else s[:57] + "...", ensure_ascii=False)


def between(lo: int, hi: int) -> Rule:
    return Rule(f"{lo}..{hi}", lambda v: None if lo <= v <= hi
                else f"must be between {lo} and {hi}, got {_num(v)}")


def at_least(lo: int) -> Rule:
    return Rule(f">= {lo}", lambda v: None if v >= lo else f"must be >= {lo}, got {_num(v)}")


def one_of(*choices: str) -> Rule:
    return Rule(" | ".join(choices), lambda v: None if v in choices else
                f"must be one of {', '.join(choices)}, got {_show(v)}")


def _is_spec(v: str) -> bool:
    module, sep, attr = v.partition(":")
    names = module.split(".") + [attr]
    return bool(sep) and all(n.isidentifier() and not keyword.iskeyword(n) for n in names)


def _spec(what: str) -> Rule:
    return Rule("", lambda v: None if _is_spec(v) else
                f'must be "module:{what}" (e.g. "mail:send"), got {_show(v)}')


def _notifier_kind(v: str) -> str | None:
    if v in NOTIFIER_KINDS or _is_spec(v):
        return None
    return f'must be one of {", ".join(NOTIFIER_KINDS)} or "module:Class", got {_show(v)}'


def _topic(v: str) -> str | None:
    if not v or re.search(r"[\s{}]", v):
        return f"must be non-empty, without whitespace, '{{' or '}}', got {_show(v)}"
    size = len(v.encode())
    return None if size <= MAX_TOPIC_BYTES else \
        f"must be at most {MAX_TOPIC_BYTES} bytes (UTF-8), got {size}"


def _prefix(v: str) -> str | None:
    if v and len(v) <= 64 and not re.search(r"[\s{}]", v):
        return None
    return f"must be 1..64 characters, without whitespace, '{{' or '}}', got {_show(v)}"


def _redis_url(v: str) -> str | None:
    """Check a redis URL without echoing it: it may carry a password."""
    try:
        url = urlsplit(v)
        port = url.port
    except ValueError as e:
        return f"is not a valid URL ({e})"
    if url.scheme == "unix":
        return None if url.path else 'needs a socket path, e.g. "unix:///run/redis.sock"'
    if url.scheme not in ("redis", "rediss"):
        return "must start with redis://, rediss:// or unix://"
    if not url.hostname or port == 0:
        return 'needs a host (and port 1..65535), e.g. "redis://127.0.0.1:6379/0"'
    db = url.path.strip("/")
    return None if not db or (db.isascii() and db.isdigit()) else "database must be a number"


def _listen(v: str) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not host or re.search(r"\s", host) or host.startswith("[") != host.endswith("]"):
        return f'must be "host:port" (e.g. "127.0.0.1:9108"), got {_show(v)}'
    if port.isascii() and port.isdigit() and 1 <= int(port) <= 65535:
        return None
    return f"port must be between 1 and 65535, got {_show(port)}"


def _rotate(v: str) -> str | None:
    if v in ("", "daily"):
        return None
    size = re.fullmatch(r"(\d+)\s*([KMG]?B)?", v, re.IGNORECASE)
    if size and int(size.group(1)) > 0:
        return None
    return f'must be "", "daily" or a size like "100MB", got {_show(v)}'


def _user(v: str) -> str | None:
    name = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}"
    if v == "" or re.fullmatch(f"{name}(:{name})?", v):
        return None
    return f'must be "user" or "user:group", got {_show(v)}'


def _name(v: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", v) else \
        f"must be 1..32 letters, digits, '.', '_' or '-', got {_show(v)}"


def _syntax(test: Callable[[Any], str | None]) -> Rule:
    return Rule("", test)


# -- declarations ---------------------------------------------------------------------------

_NOTHING = object()


class Setting(NamedTuple):
    doc: str
    rule: Rule | None = None
    key: str | None = None  # TOML key, when it differs from the attribute name
    example: Any = _NOTHING  # value shown in config_example.toml, when not the default


def setting(default: Any = MISSING, doc: str = "", *, rule: Rule | None = None,
            key: str | None = None, example: Any = _NOTHING) -> Any:
    """Declare one config key as a dataclass field (no default = required)."""
    meta = {"setting": Setting(doc, rule, key, example)}
    if isinstance(default, dict):
        return field(default_factory=lambda: MappingProxyType(dict(default)), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    name: str = setting("ssjobs", 'process titles: "<name>: master", "<name>: worker <topic> #<n>"',
                        rule=_syntax(_name))
    data_dir: Path = setting(doc="pid file, lock, shared-memory scoreboard, status snapshot",
                             example="./data/process")
    user: str = setting("", 'drop privileges after start (root only), "www" or "www:www"',
                        rule=_syntax(_user))
    consumer_path: tuple[Path, ...] = setting(
        (), "dirs put on sys.path before importing consumers (string or array)",
        example=["./examples/consumers"])
    stop_timeout: float = setting(
        30.0, "seconds in-flight jobs may take to finish on stop/restart before SIGKILL",
        rule=at_least(0))
    heartbeat_ttl: float = setting(
        30.0, "a host whose master heartbeat is older than this is dead; others requeue its jobs",
        rule=at_least(1))


@dataclass(frozen=True)
class LogConfig:
    dir: Path = setting(doc="ssjobs.log is written here", example="./data/logs")
    level: str = setting("info", "log level", rule=one_of("debug", "info", "warning", "error"))
    format: str = setting("text", "json = one JSON object per line", rule=one_of("text", "json"))
    rotate: str = setting("", '"" (leave it to logrotate + USR1), "daily", or a size like "100MB"',
                          rule=_syntax(_rotate))
    keep: int = setting(14, "rotated files to keep", rule=at_least(0))
    handler_class: str | None = setting(
        None, "optional custom logging.Handler subclass", key="class",
        rule=_spec("Class"), example="mypkg.logs:MyLogHandler")


@dataclass(frozen=True)
class RedisConfig:
    url: str = setting("redis://127.0.0.1:6379/0", "redis://, rediss:// (TLS), unix:///path.sock",
                       rule=_syntax(_redis_url))
    prefix: str = setting("ssjobs", "key namespace", rule=_syntax(_prefix))


@dataclass(frozen=True)
class NotifierConfig:
    kind: str = setting(doc=f'{" | ".join(NOTIFIER_KINDS)} | "module:Class"', key="class",
                        rule=_syntax(_notifier_kind), example="dingtalk")
    log_notify: bool = setting(True, "send ERROR-level log lines (rate-limited, de-duplicated)")
    jobs_check_notify: bool = setting(
        True, "send job-monitoring alerts (backlog, dead letters, crash loops)")
    alert_after: float = setting(
        30.0, "seconds a condition (e.g. backlog > queue_health_size) must hold",
        rule=at_least(0))
    repeat_interval: float = setting(
        600.0, "the same message/alert is sent at most once per this many seconds",
        rule=at_least(0))
    params: Mapping[str, Any] = setting(
        {}, "dingtalk: token (or url), secret; webhook/slack/feishu/wecom: url "
        "(+ secret for feishu); all: prefix",
        example={"token": "xxxx", "secret": "", "prefix": "[prod]"})


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = setting(doc="Prometheus text format at /metrics, served by the master",
                          rule=_syntax(_listen), example="127.0.0.1:9108")

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True)
class JobConfig:
    topic: str = setting(doc="unique", rule=_syntax(_topic))
    consumer: str = setting(doc='"module:function" or "module:Class"', rule=_spec("function"))
    static_workers: int = setting(1, "always running, restarted if they exit",
                                  rule=between(1, 1024))
    dynamic_workers: int = setting(0, "started while backlog > queue_health_size",
                                   rule=between(0, 1024))
    queue_health_size: int = setting(100, "backlog above this is unhealthy (0 = never check)",
                                     rule=at_least(0))
    max_execute_time: float = setting(
        0.0, "seconds a worker lives before it is recycled (0 = no limit)", rule=at_least(0))
    max_consumer_count: int = setting(
        0, "jobs a worker handles before it is recycled (0 = no limit)", rule=at_least(0))
    dynamic_idle_time: float = setting(
        60.0, "seconds a dynamic worker may idle before it exits (0 = never)", rule=at_least(0))
    job_timeout: float = setting(300.0, "seconds one job may run (0 = no limit)",
                                 rule=at_least(0))
    max_retries: int = setting(3, "then the job goes to the dead-letter list",
                               rule=between(0, 1000))
    retry_backoff: float = setting(10.0, "seconds; exponential with jitter: ~10, 20, 40 ...",
                                   rule=at_least(0))
    max_memory_mb: int = setting(0, "recycle a worker whose RSS passes this (0 = no limit)",
                                 rule=at_least(0))
    batch_size: int = setting(100, "jobs a worker may fetch per Redis round trip",
                              rule=between(1, 1000))
    redis: RedisConfig | None = None  # [jobs.redis]: this topic on another Redis


@dataclass(frozen=True)
class Config:
    path: Path
    process: ProcessConfig
    log: LogConfig
    redis: RedisConfig
    notifier: NotifierConfig | None
    metrics: MetricsConfig | None
    jobs: tuple[JobConfig, ...]

    def job(self, topic: str) -> JobConfig:
        """The job of ``topic``; KeyError when the config has no such topic."""
        for job in self.jobs:
            if job.topic == topic:
                return job
        raise KeyError(topic)

    def redis_for(self, job: JobConfig) -> RedisConfig:
        return job.redis or self.redis


class Section(NamedTuple):
    cls: type
    doc: str = ""
    optional: bool = False  # absent → None (else absent → defaults, or missing-key errors)
    array: bool = False     # [[name]], a non-empty array of tables


SECTIONS: dict[str, Section] = {
    "process": Section(ProcessConfig),
    "log": Section(LogConfig),
    "redis": Section(RedisConfig),
    "notifier": Section(NotifierConfig, "optional: alerts and ERROR log lines", optional=True),
    "metrics": Section(MetricsConfig, "optional", optional=True),
    "jobs": Section(JobConfig, "one per topic", array=True),
}
JOB_REDIS_DOC = "optional: this topic on another Redis (keys not set come from [redis])"


# -- types: the annotation of a field picks its converter -------------------------------------

class _Invalid(ValueError):
    def __init__(self, message: str, sub: str = "") -> None:
        super().__init__(message)
        self.sub = sub  # e.g. "[1]" for an array element


def _describe(v: Any) -> str:
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"{'integer' if isinstance(v, int) else 'float'} {v!r}"
    if isinstance(v, str):
        return f"string {_show(v)}"
    return {list: "array", dict: "table"}.get(type(v), type(v).__name__)


def _to(kind: type, what: str) -> Callable[[Any, Path], Any]:
    def convert(v: Any, base: Path) -> Any:
        if isinstance(v, kind) and (kind is bool or not isinstance(v, bool)):
            return v
        raise _Invalid(f"must be {what}, got {_describe(v)}")
    return convert


def _to_float(v: Any, base: Path) -> float:
    v = _to((int, float), "a number")(v, base)  # type: ignore[arg-type]
    if not math.isfinite(v):
        raise _Invalid(f"must be a finite number, got {v}")
    return float(v)


def _to_path(v: Any, base: Path) -> Path:
    if not _to(str, "a string")(v, base).strip():
        raise _Invalid("must not be empty")
    return Path(os.path.normpath(base / Path(v).expanduser()))


def _to_paths(v: Any, base: Path) -> tuple[Path, ...]:
    if not isinstance(v, (str, list)):
        raise _Invalid(f"must be a string or an array of strings, got {_describe(v)}")
    out = []
    for i, item in enumerate([v] if isinstance(v, str) else v):
        try:
            out.append(_to_path(item, base))
        except _Invalid as e:
            raise _Invalid(str(e), f"[{i}]") from None
    return tuple(out)


def _to_table(v: Any, base: Path) -> Mapping[str, Any]:
    return MappingProxyType(dict(_to(dict, "a table")(v, base)))


_KINDS: dict[str, Callable[[Any, Path], Any]] = {
    "str": _to(str, "a string"), "str | None": _to(str, "a string"),
    "int": _to(int, "an integer"), "float": _to_float, "bool": _to(bool, "true or false"),
    "Path": _to_path, "tuple[Path, ...]": _to_paths, "Mapping[str, Any]": _to_table,
}


class Spec(NamedTuple):
    attr: str
    key: str
    convert: Callable[[Any, Path], Any]
    default: Any  # MISSING when required
    setting: Setting


@cache
def specs(cls: type) -> tuple[Spec, ...]:
    """The declared settings of one section's dataclass, in declaration order."""
    out = []
    for f in fields(cls):
        if "setting" in f.metadata:
            s = f.metadata["setting"]
            default = {} if f.default_factory is not MISSING else f.default
            out.append(Spec(f.name, s.key or f.name, _KINDS[str(f.type)], default, s))
    return tuple(out)


# -- loading --------------------------------------------------------------------------------

class _Ctx:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.errors: list[tuple[str, str]] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append((path, message))


def _table(cls: type, raw: Any, path: str, ctx: _Ctx, defaults: Mapping[str, Any] | None = None,
           extra: Mapping[str, Any] | None = None) -> Any:
    """Build ``cls`` from one TOML table; None (and errors in ``ctx``) when it is invalid."""
    if not isinstance(raw, dict):
        ctx.error(path, f"must be a table, got {_describe(raw)}")
        return None
    extra = extra or {}
    before, values = len(ctx.errors), {**(defaults or {}), **extra}
    for spec in specs(cls):
        where = f"{path}.{spec.key}"
        if spec.key not in raw:
            if spec.default is MISSING:
                ctx.error(where, "required key is missing")
            continue
        try:
            values[spec.attr] = spec.convert(raw[spec.key], ctx.base)
        except _Invalid as e:
            ctx.error(where + e.sub, str(e))
            continue
        message = spec.setting.rule and spec.setting.rule.test(values[spec.attr])
        if message:
            ctx.error(where, message)
    _unknown(raw, [s.key for s in specs(cls)] + list(extra), path, ctx)
    return cls(**values) if len(ctx.errors) == before else None


def _unknown(raw: dict, known: list[str], path: str, ctx: _Ctx) -> None:
    for key in raw:
        if key not in known:
            what = "table" if isinstance(raw[key], dict) else "key"
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {_show(close[0])}?)" if close else ""
            ctx.error(f"{path}.{key}" if path else key, f"unknown {what}{hint}")


def _jobs(raw: Any, ctx: _Ctx, redis: RedisConfig | None) -> tuple[JobConfig, ...]:
    if not isinstance(raw, list) or not raw:
        got = "nothing" if raw is None else "an empty array" if raw == [] else _describe(raw)
        ctx.error("jobs", f"must be a non-empty array of tables ([[jobs]]), got {got}")
        return ()
    jobs, seen = [], {}
    for i, item in enumerate(raw):
        path, sub = f"jobs[{i}]", item.get("redis") if isinstance(item, dict) else None
        job_redis = None if sub is None else \
            _table(RedisConfig, sub, f"{path}.redis", ctx, asdict(redis or RedisConfig()))
        jobs.append(_table(JobConfig, item, path, ctx, extra={"redis": job_redis}))
        topic = item.get("topic") if isinstance(item, dict) else None
        if isinstance(topic, str) and topic in seen:
            ctx.error(f"{path}.topic", f"duplicate topic {_show(topic)} (also {seen[topic]})")
        elif isinstance(topic, str):
            seen[topic] = f"jobs[{i}]"
    return tuple(jobs)


def _build(doc: dict, ctx: _Ctx, file: Path) -> Config | None:
    _unknown(doc, list(SECTIONS), "", ctx)
    parts: dict[str, Any] = {}
    for name, section in SECTIONS.items():
        if section.array:
            parts[name] = _jobs(doc.get(name), ctx, parts.get("redis"))
        elif name in doc or not section.optional:
            parts[name] = _table(section.cls, doc.get(name, {}), name, ctx)
        else:
            parts[name] = None
    return None if ctx.errors else Config(path=file, **parts)


def _read(file: Path) -> tuple[dict, str]:
    """Parse the file; ConfigError with a hint when it is missing, unreadable or not TOML."""
    hint = "pass -c PATH or set SSJOBS_CONFIG; start from config_example.toml"
    try:
        text = file.read_bytes().decode("utf-8")
        return tomllib.loads(text), text
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found (hint: {hint})", str(file)) from e
    except IsADirectoryError as e:
        raise ConfigError(f"is a directory, not a config file (hint: {hint})", str(file)) from e
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror} (hint: check the file's "
                          "owner and mode)", str(file)) from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", str(file)) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", str(file)) from e


def _fail(ctx: _Ctx, text: str, file: Path) -> ConfigError:
    lines = key_lines(text)
    rows = [(line_of(path, lines), path, message) for path, message in ctx.errors]
    rows.sort(key=lambda row: row[0] or math.inf)
    return ConfigError([f"{p} (line {n}): {m}" if n else f"{p}: {m}" for n, p, m in rows],
                       str(file))


def _abspath(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def load_config(path: str | os.PathLike) -> Config:
    """Load and validate a config file; ConfigError lists every problem found."""
    file = _abspath(path)
    doc, text = _read(file)
    ctx = _Ctx(file.parent)
    config = _build(doc, ctx, file)
    if config is None:
        raise _fail(ctx, text, file)
    return config


def load_data_dir(path: str | os.PathLike) -> Path:
    """Only ``process.data_dir``, ignoring the rest (for stop/status/revive)."""
    file = _abspath(path)
    doc, text = _read(file)
    ctx = _Ctx(file.parent)
    process = doc.get("process")
    if not isinstance(process, dict) or "data_dir" not in process:
        ctx.error("process.data_dir", "required key is missing")
    else:
        try:
            return _to_path(process["data_dir"], ctx.base)
        except _Invalid as e:
            ctx.error("process.data_dir", str(e))
    raise _fail(ctx, text, file)


def find_config_path(cli_value: str | None = None) -> Path:
    """The ``-c`` value, else $SSJOBS_CONFIG, else ./ssjobs.toml (made absolute)."""
    return _abspath(cli_value or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME)


# -- line numbers: a light scan of the source, best effort --------------------------------

_KEY_PART = r"""(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)"""
_HEADER = re.compile(rf"\s*(\[\[?)\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*\]")
_ASSIGN = re.compile(rf"\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")


def _parts(dotted: str) -> list[str]:
    return [p.strip("\"'") for p in re.findall(_KEY_PART, dotted)]


def _header_path(parts: list[str], array: bool, counts: dict[str, int]) -> str:
    path = ""
    for i, part in enumerate(parts):
        path = f"{path}.{part}" if path else part
        if array and i == len(parts) - 1:
            counts[path] = counts.get(path, 0) + 1
        if path in counts:
            path = f"{path}[{counts[path] - 1}]"
    return path


def key_lines(text: str) -> dict[str, int]:
    """Map key paths (``jobs[1].topic``, and table paths like ``jobs[1]``) to line numbers."""
    lines: dict[str, int] = {}
    counts: dict[str, int] = {}
    table, in_multiline = "", False
    try:
        for number, line in enumerate(text.splitlines(), 1):
            quotes = line.count('"""') + line.count("'''")
            if not in_multiline:
                header, assign = _HEADER.match(line), _ASSIGN.match(line)
                if header:
                    table = _header_path(_parts(header[2]), header[1] == "[[", counts)
                    lines.setdefault(table, number)
                elif assign:
                    key = table
                    for part in _parts(assign[1]):  # a.b = 1 also locates table "a"
                        key = f"{key}.{part}" if key else part
                        lines.setdefault(key, number)
            in_multiline ^= quotes % 2 == 1
    except Exception:  # never let a best-effort scan hide the real errors
        pass
    return lines


def line_of(path: str, lines: Mapping[str, int]) -> int | None:
    """The line of ``path``, else of its nearest enclosing key or table."""
    while path:
        if path in lines:
            return lines[path]
        parent = re.sub(r"(\.[^.\[\]]*|\[\d+\])$", "", path)
        path = "" if parent == path else parent
    return None


# -- config_example.toml ------------------------------------------------------------------

EXAMPLE_JOBS: tuple[dict[str, Any], ...] = (
    {"topic": "demo.echo", "consumer": "demo:echo", "static_workers": 2, "dynamic_workers": 2,
     "max_consumer_count": 1000, "max_execute_time": 3600},
    {"topic": "demo.report", "consumer": "demo:Report", "max_retries": 2, "retry_backoff": 1},
)
_EXAMPLE_HEAD = """\
# ssjobs configuration: every key, its default and what it does.
# Generated from ssjobs/config.py by `python -m ssjobs.config > config_example.toml`;
# a test fails when the two drift apart. Relative paths are relative to this file.
"""


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return _num(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(str(v))


def _line(key: str, value: Any, comment: str, commented: bool = False) -> str:
    text = f"{'# ' if commented else ''}{key} = {_toml(value)}" if key else value
    return f"{text:<36} # {comment}" if comment else text


def _render_table(cls: type, header: str, doc: str, commented: bool,
                  overrides: Mapping[str, Any] | None = None) -> list[str]:
    out = [_line("", header, doc)]
    tables = []
    for spec in specs(cls):
        s, default = spec.setting, spec.default
        value = s.example if s.example is not _NOTHING else default
        value = value if overrides is None else overrides.get(spec.key, value)
        if overrides is not None and overrides.get("_only") and spec.key not in overrides:
            continue
        notes = [s.rule.hint] if s.rule and s.rule.hint else []
        if default is not MISSING and value != default and not isinstance(default, dict):
            notes.append(f"default {_toml(default)}")
        doc_line = ("REQUIRED. " if default is MISSING else "") + s.doc
        doc_line += f" ({', '.join(notes)})" if notes else ""
        if isinstance(default, dict):
            tables += ["", _line("", f"[{header.strip('[]')}.{spec.key}]", doc_line)]
            tables += [_line(k, v, "") for k, v in value.items()]
        else:
            out.append(_line(spec.key, value, doc_line, default is None))
    out += tables
    return [f"# {x}" if commented and not x.startswith("#") and x else x for x in out]


def render_example() -> str:
    """The text of ``config_example.toml``, generated from the declarations."""
    out = [_EXAMPLE_HEAD]
    for name, section in SECTIONS.items():
        if not section.array:
            out += _render_table(section.cls, f"[{name}]", section.doc, section.optional) + [""]
            continue
        for i, job in enumerate(EXAMPLE_JOBS):
            overrides = {**job, "_only": i > 0}  # the first job shows every key
            out += _render_table(section.cls, f"[[{name}]]", section.doc, False, overrides)
            if i == 0:
                out += [""] + _render_table(RedisConfig, f"[{name}.redis]", JOB_REDIS_DOC, True)
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(render_example(), end="")
