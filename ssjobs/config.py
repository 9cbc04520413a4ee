"""TOML config → frozen dataclasses, with every error reported at once.

Each setting is declared once, as a dataclass field made by :func:`setting` (TOML key, type
from the annotation, default, rule, one-line doc). Loading, validation, error messages and
``config_example.toml`` and the key tables of docs/reference.md (``ssjobs.configdoc``) all
come from those declarations.
Errors read ``jobs[1].static_workers (line 42): must be between 1 and 1024, got 0``.
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple
from urllib.parse import quote

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from . import redact, rules, urls
from .errors import ConfigError
from .names import topic_problem
from .rules import (
    LOG_FORMATS,
    LOG_LEVELS,
    RATE_RULE,
    ROTATE_RULE,
    Rule,
    between,
    cron_problem,
    matches,
    one_of,
    rate,
    spec_rule,
    zone_problem,
)
from .tomllines import key_lines, line_of
from .urls import http_url_problem, show

CONFIG_ENV = "SSJOBS_CONFIG"
DEFAULT_CONFIG_NAME = "ssjobs.toml"
MAX_PAYLOAD_LIMIT = 512 * 1024 * 1024  # Redis' own limit on one string (proto-max-bulk-len)
STDERR = "-"  # log.dir that means "log to stderr" (foreground runs: docker, journald)
EMBEDDED = "embedded"  # redis.url: the master runs its own redis-server (ssjobs.embedded)
EMBEDDED_DIR_NAME = "redis"  # data_dir/redis/: that server's files, its socket among them
EMBEDDED_SOCKET_NAME = "redis.sock"
MAX_SOCKET_PATH_BYTES = 107  # a Unix socket address holds 108 bytes, the last one a NUL
_HINT = "pass -c PATH or set SSJOBS_CONFIG; start from config_example.toml"


class ChannelParams(NamedTuple):
    """The ``[notifier.params]`` of one built-in channel: exactly one of ``need``, any of
    ``keys``; every value a string except ``headers`` (a table of strings)."""

    need: tuple[str, ...]
    keys: tuple[str, ...]


# The one list of what each built-in notifier takes (ssjobs/notify/*.py take these keyword
# arguments; a test checks that the two agree). A "module:Class" takes what its class takes.
NOTIFIER_PARAMS = {
    "dingtalk": ChannelParams(("token", "url"), ("token", "url", "secret", "prefix")),
    "webhook": ChannelParams(("url",), ("url", "headers", "prefix")),
    "slack": ChannelParams(("url",), ("url", "prefix")),
    "feishu": ChannelParams(("url",), ("url", "secret", "prefix")),
    "wecom": ChannelParams(("key", "url"), ("key", "url", "prefix")),
}
NOTIFIER_KINDS = tuple(NOTIFIER_PARAMS)


# -- declarations: one dataclass field per key -----------------------------------------------

_NOTHING = object()
_USER = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}"


def setting(default: Any = MISSING, doc: str = "", *, rule: Rule | Callable | None = None,
            key: str | None = None, example: Any = _NOTHING,
            convert: Callable[[Any, Path], Any] | None = None,
            commented: bool | None = None) -> Any:
    """Declare one key: TOML ``key`` (default: the field name), ``rule``, one-line ``doc``, and
    the ``example`` value for config_example.toml. No default means the key is required.
    ``convert`` replaces the converter the annotation picks; ``commented`` says whether the
    example shows the key commented out (default: when its default is None)."""
    meta = {"doc": doc, "rule": Rule("", rule) if callable(rule) else rule, "key": key,
            "example": example, "convert": convert, "commented": commented}
    if isinstance(default, dict):
        return field(default_factory=lambda: MappingProxyType(dict(default)), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    name: str = setting("ssjobs", 'process titles: "<name>: master", "<name>: worker <topic> #<n>"',
                        rule=matches(r"[A-Za-z0-9_.-]{1,32}", "1..32 of A-Z a-z 0-9 . _ -"))
    data_dir: Path = setting(doc="pid file, lock, shared-memory scoreboard, status snapshot",
                             example="./data/process")
    user: str = setting("", 'drop privileges after start (root only): "www" or "www:www"',
                        rule=matches(f"|{_USER}(:{_USER})?", '"user" or "user:group"'))
    consumer_path: tuple[Path, ...] = setting(
        (), "dirs put on sys.path before importing consumers", example=["./examples/consumers"])
    stop_timeout: float = setting(30.0, "seconds jobs may take to finish on stop before SIGKILL",
                                  rule=between(0))
    heartbeat_ttl: float = setting(30.0, "seconds; a host whose master heartbeat is older is dead "
                                   "and its jobs are requeued", rule=between(1))
    workdir: Path | None = setting(None, "the master's and workers' working directory "
                                   "(default: this file's directory)", example="./")


def _to_log_dir(v: Any, base: Path) -> Path | None:
    return None if v == STDERR else _to_path(v, base)


@dataclass(frozen=True)
class LogConfig:
    dir: Path | None = setting(None, f'where ssjobs.log is written; "{STDERR}" or unset: stderr '
                               "(start --foreground only)", convert=_to_log_dir,
                               example="./data/logs", commented=False)
    level: str = setting("info", "log level", rule=one_of(*LOG_LEVELS))
    format: str = setting("text", "json: one JSON object per line", rule=one_of(*LOG_FORMATS))
    rotate: str = setting("", '"" (leave it to logrotate + USR1), "daily", or a size like "100MB"',
                          rule=ROTATE_RULE)
    keep: int = setting(14, "rotated files to keep", rule=between(0))
    handler_class: str | None = setting(None, "custom logging.Handler subclass", key="class",
                                        rule=spec_rule('"module:Class"'),
                                        example="mypkg.logs:MyLogHandler")


@dataclass(frozen=True)
class RedisConfig:
    url: str = setting("redis://127.0.0.1:6379/0",
                       "redis://, rediss:// (TLS), unix:///path.sock, "
                       "redis+cluster://node:port, redis+sentinel://host:port/service, "
                       f'"{EMBEDDED}" (the master runs one: docs/deploy.md)',
                       rule=lambda v: None if v == EMBEDDED else urls.redis_url_problem(v),
                       example=EMBEDDED)
    prefix: str = setting("ssjobs", "key namespace",
                          rule=matches(r"[^\s{}]{1,64}", "1..64 characters, no space, { or }"))
    embedded_port: int = setting(0, f'with "{EMBEDDED}": also on 127.0.0.1:PORT; 0: its Unix '
                                 "socket only", rule=between(0, 65535))
    # Not a key: load_config turns url = "embedded" into the URL of that server's socket
    # (embedded_url) and sets this, so every process on the host reaches the same server.
    embedded: bool = False


@dataclass(frozen=True)
class NotifierConfig:
    kind: str = setting(doc=" | ".join([*NOTIFIER_KINDS, '"module:Class"']), key="class",
                        rule=spec_rule(f'{", ".join(NOTIFIER_KINDS)} or "module:Class"',
                                       *NOTIFIER_KINDS), example="dingtalk")
    log_notify: bool = setting(True, "send ERROR log lines (rate-limited, de-duplicated)")
    jobs_check_notify: bool = setting(True, "send job alerts: backlog, dead letters, crash loops")
    alert_after: float = setting(30.0, "seconds a condition (e.g. backlog) must hold to alert",
                                 rule=between(0))
    repeat_interval: float = setting(600.0, "seconds before the same alert is sent again",
                                     rule=between(0))
    params: Mapping[str, Any] = setting(
        {}, "the channel's settings: dingtalk token or url, wecom key or url, the others url "
        "(all of them: docs/consumers.md)",
        example={"token": "xxxx", "secret": "", "prefix": "[prod]"})


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = setting(doc="Prometheus text format at /metrics, served by the master",
                          rule=urls.listen_problem, example="127.0.0.1:9108")
    token: str = setting("", 'scrapes must send "Authorization: Bearer <token>"; "": none')
    allow_public: bool = setting(False, "serve a non-loopback listen address without a token")

    def cross_check(self) -> list[tuple[str, str]]:
        """(key, message) of what the keys together do not allow."""
        if self.token or self.allow_public or urls.is_loopback(self.address[0]):
            return []
        return [("listen", f"{urls.show(self.listen)} is not a loopback address, so anyone who "
                           "reaches it could scrape the metrics: set metrics.token, or "
                           "allow_public = true")]

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``; an IPv6 host loses its brackets."""
        return urls.split_listen(self.listen)


@dataclass(frozen=True)
class WebConfig:
    listen: str = setting("127.0.0.1:9181", "the dashboard of `ssjobs web` (docs/web.md)",
                          rule=urls.listen_problem)
    token: str = setting("", 'every page and API call needs it (login form, or "Authorization: '
                         'Bearer <token>"); "": none, and listen must be loopback')
    read_only: bool = setting(False, "no retry, purge or cancel: the buttons are gone and "
                              "their endpoints refuse")
    root_path: str = setting("", 'the path prefix behind a reverse proxy, e.g. "/ssjobs"',
                             rule=matches(r"|/[^\s?#]*", '"" or a path like "/ssjobs"'))

    def cross_check(self) -> list[tuple[str, str]]:
        """(key, message) of what the keys together do not allow."""
        if self.token or urls.is_loopback(self.address[0]):
            return []
        return [("listen", f"{urls.show(self.listen)} is not a loopback address, so anyone who "
                           "reaches it could retry, purge and read every payload: set "
                           "web.token, or listen on 127.0.0.1 behind an authenticating proxy")]

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``; an IPv6 host loses its brackets."""
        return urls.split_listen(self.listen)


@dataclass(frozen=True)
class JobConfig:
    topic: str = setting(doc="unique", rule=topic_problem)
    consumer: str = setting(doc='"module:function" or "module:Class"',
                            rule=spec_rule('"module:function" or "module:Class"'))
    static_workers: int = setting(1, "always running, restarted if they exit",
                                  rule=between(1, 1024))
    dynamic_workers: int = setting(0, "run while backlog > queue_health_size",
                                   rule=between(0, 1024))
    queue_health_size: int = setting(100, "backlog above this is unhealthy; 0: never check",
                                     rule=between(0))
    max_execute_time: float = setting(0.0, "seconds a worker lives before it is recycled; "
                                      "0: no limit", rule=between(0))
    max_consumer_count: int = setting(0, "jobs a worker handles before it is recycled; "
                                      "0: no limit", rule=between(0))
    dynamic_idle_time: float = setting(60.0, "seconds a dynamic worker may idle; 0: never exits",
                                       rule=between(0))
    job_timeout: float = setting(300.0, "seconds one job may run; 0: no limit", rule=between(0))
    max_retries: int = setting(3, "retries, then the job is dead-lettered", rule=between(0, 1000))
    retry_backoff: float = setting(10.0, "seconds; doubles per retry, with jitter",
                                   rule=between(0))
    max_memory_mb: int = setting(0, "recycle a worker whose RSS passes this; 0: no limit",
                                 rule=between(0))
    batch_size: int = setting(100, "jobs fetched per Redis round trip", rule=between(1, 1000))
    max_payload_bytes: int = setting(
        1024 * 1024, "a fetched envelope larger than this is dead-lettered as too_large",
        rule=between(1024, MAX_PAYLOAD_LIMIT))
    concurrency_per_worker: int = setting(1, "async def consumers: jobs of a batch one worker "
                                          "runs at once on its event loop", rule=between(1, 1000))
    rate_limit: str = setting("", "job starts, fleet-wide (all workers on every host); \"\": none",
                              rule=RATE_RULE)
    concurrency: int = setting(0, "jobs running at once, fleet-wide; 0: no limit",
                               rule=between(0, 1_000_000))
    track: bool = setting(False, "record each job's state, result and progress "
                          "(Producer.status, ssjobs job show)")
    result_ttl: float = setting(86400.0, "seconds a finished tracked job's record is kept",
                                rule=between(1))
    redis: RedisConfig | None = None  # [jobs.redis]: this topic on another Redis

    @property
    def rate(self) -> tuple[int, float] | None:
        """``rate_limit`` as (jobs, per seconds), or None."""
        return rate(self.rate_limit)


def _any(v: Any, base: Path) -> Any:
    return v


@dataclass(frozen=True)
class PeriodicConfig:
    topic: str = setting(doc="a topic of [[jobs]]", rule=topic_problem, example="demo.report")
    cron: str = setting("", '5 fields (min hour day month weekday) or @hourly @daily @weekly '
                        '@monthly; "": use every', rule=Rule("", cron_problem),
                        example="0 8 * * 1-5")
    every: float = setting(0.0, "seconds between runs instead of cron (>= 1); 0: use cron",
                           rule=between(0))
    timezone: str = setting("", 'IANA name for cron, like "Asia/Shanghai"; "": this host\'s',
                            rule=Rule("", zone_problem))
    payload: Any = setting(None, "what the job gets as its payload (any TOML value)",
                           convert=_any, example={"kind": "daily"})

    def cross_check(self) -> list[tuple[str, str]]:
        if bool(self.cron) == bool(self.every):
            return [("cron", "set exactly one of cron and every")]
        if self.every and self.every < 1:
            return [("every", f"must be >= 1 second, got {rules.number(self.every)}")]
        return []

    @property
    def schedule(self) -> str:
        """How status shows it: the cron expression, or "every N s"."""
        return self.cron or f"every {rules.number(self.every)}s"


@dataclass(frozen=True)
class Config:
    path: Path
    process: ProcessConfig
    log: LogConfig
    redis: RedisConfig
    notifier: NotifierConfig | None
    metrics: MetricsConfig | None
    jobs: tuple[JobConfig, ...]
    periodic: tuple[PeriodicConfig, ...] = ()
    web: WebConfig | None = None

    def job(self, topic: str) -> JobConfig:
        """The job of ``topic``; KeyError when the config has no such topic."""
        for job in self.jobs:
            if job.topic == topic:
                return job
        raise KeyError(topic)

    def redis_for(self, job: JobConfig) -> RedisConfig:
        return job.redis or self.redis

    @property
    def embedded_redis(self) -> RedisConfig | None:
        """The first Redis of this config with url = "embedded" (there is one such server
        per host, whichever tables name it), or None: then the master runs none."""
        return next((r for r in (self.redis, *(j.redis for j in self.jobs))
                     if r is not None and r.embedded), None)

    @property
    def workdir(self) -> Path:
        """``process.workdir``, else the config file's directory."""
        return self.process.workdir or self.path.parent


class Section(NamedTuple):
    cls: type
    doc: str = ""
    optional: bool = False  # absent: None (else absent: defaults, or missing-key errors)
    array: bool = False  # [[name]]: a non-empty array of tables


SECTIONS: dict[str, Section] = {
    "process": Section(ProcessConfig),
    "log": Section(LogConfig),
    "redis": Section(RedisConfig),
    "notifier": Section(NotifierConfig, "optional: alerts and ERROR log lines", optional=True),
    "metrics": Section(MetricsConfig, "optional", optional=True),
    "web": Section(WebConfig, "optional: the dashboard, `ssjobs web`", optional=True),
    "jobs": Section(JobConfig, "one per topic", array=True),
    "periodic": Section(PeriodicConfig, "optional: a job pushed on a schedule, once per tick "
                        "across every master", optional=True, array=True),
}
JOB_REDIS_DOC = "optional: this topic on another Redis (unset keys come from [redis])"


# -- types: the annotation of a field picks its converter -----------------------------------

class _Invalid(ValueError):
    def __init__(self, message: str, sub: str = "") -> None:
        super().__init__(message)
        self.sub = sub  # e.g. "[1]" for an array element


def _describe(v: Any) -> str:
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"{'integer' if isinstance(v, int) else 'float'} {v!r}"
    return f"string {show(v)}" if isinstance(v, str) else \
        {"list": "array", "dict": "table"}.get(type(v).__name__, type(v).__name__)


def _to(kind: type | tuple[type, ...], what: str) -> Callable[[Any, Path], Any]:
    def convert(v: Any, base: Path) -> Any:
        if isinstance(v, kind) and (kind is bool or not isinstance(v, bool)):
            return v
        raise _Invalid(f"must be {what}, got {_describe(v)}")
    return convert


def _to_float(v: Any, base: Path) -> float:
    if not math.isfinite(_to((int, float), "a number")(v, base)):
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


_KINDS: dict[str, Callable[[Any, Path], Any]] = {
    "str": _to(str, "a string"), "str | None": _to(str, "a string"),
    "int": _to(int, "an integer"), "float": _to_float, "bool": _to(bool, "true or false"),
    "Path": _to_path, "Path | None": _to_path, "tuple[Path, ...]": _to_paths,
    "Mapping[str, Any]": lambda v, base: MappingProxyType(dict(_to(dict, "a table")(v, base))),
    "Any": _any,
}


class Spec(NamedTuple):
    attr: str
    key: str
    convert: Callable[[Any, Path], Any]
    default: Any  # MISSING when required
    rule: Rule | None
    doc: str
    example: Any
    commented: bool  # shown commented out in config_example.toml
    type: str        # the annotation, as written (for docs/reference.md)


@cache
def specs(cls: type) -> tuple[Spec, ...]:
    """The declared settings of one section's dataclass, in declaration order."""
    return tuple(Spec(f.name, f.metadata["key"] or f.name,
                      f.metadata["convert"] or _KINDS[str(f.type)],
                      {} if f.default_factory is not MISSING else f.default, f.metadata["rule"],
                      f.metadata["doc"], f.metadata["example"],
                      f.default is None if f.metadata["commented"] is None
                      else f.metadata["commented"], str(f.type))
                 for f in fields(cls) if "doc" in f.metadata)


# -- loading --------------------------------------------------------------------------------

@dataclass
class _Ctx:
    base: Path  # relative paths are relative to the config file's directory
    errors: list[tuple[str, str]] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.errors.append((path, message))


def _table(cls: type, raw: Any, path: str, ctx: _Ctx, defaults: Mapping[str, Any] | None = None,
           extra: Mapping[str, Any] | None = None) -> Any:
    """Build ``cls`` from one TOML table; None (and errors in ``ctx``) when it is invalid."""
    if not isinstance(raw, dict):
        return ctx.error(path, f"must be a table, got {_describe(raw)}")
    before, values = len(ctx.errors), {**(defaults or {}), **(extra or {})}
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
        if spec.rule and (message := spec.rule.test(values[spec.attr])):
            ctx.error(where, message)
    _unknown(raw, [s.key for s in specs(cls)] + list(extra or ()), path, ctx)
    if len(ctx.errors) != before:
        return None
    built = cls(**values)
    for key, message in getattr(built, "cross_check", list)():
        ctx.error(f"{path}.{key}", message)
    return built if len(ctx.errors) == before else None


def _unknown(raw: dict, known: list[str], path: str, ctx: _Ctx) -> None:
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {show(close[0])}?)" if close else ""
            what = "table" if isinstance(raw[key], dict) else "key"
            ctx.error(f"{path}.{key}" if path else key, f"unknown {what}{hint}")


def _jobs(raw: Any, ctx: _Ctx, redis: RedisConfig | None) -> tuple[JobConfig, ...]:
    if not isinstance(raw, list) or not raw:
        got = "nothing" if raw is None else "an empty array" if raw == [] else _describe(raw)
        ctx.error("jobs", f"must be a non-empty array of tables ([[jobs]]), got {got}")
        return ()
    jobs: list[JobConfig] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(raw):
        path, sub = f"jobs[{i}]", item.get("redis") if isinstance(item, dict) else None
        job_redis = None if sub is None else \
            _table(RedisConfig, sub, f"{path}.redis", ctx, asdict(redis or RedisConfig()))
        jobs.append(_table(JobConfig, item, path, ctx, extra={"redis": job_redis}))
        topic = item.get("topic") if isinstance(item, dict) else None
        if isinstance(topic, str) and topic in seen:
            ctx.error(f"{path}.topic", f"duplicate topic {show(topic)} (also in {seen[topic]})")
        elif isinstance(topic, str):
            seen[topic] = path
    return tuple(jobs)


def _periodic(raw: Any, ctx: _Ctx, jobs: tuple[JobConfig, ...]) -> tuple[PeriodicConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        ctx.error("periodic", f"must be an array of tables ([[periodic]]), got {_describe(raw)}")
        return ()
    topics = {job.topic for job in jobs if job is not None}
    out = []
    for i, item in enumerate(raw):
        entry = _table(PeriodicConfig, item, f"periodic[{i}]", ctx)
        if entry is not None and topics and entry.topic not in topics:
            ctx.error(f"periodic[{i}].topic", f"{show(entry.topic)} is not a topic of "
                      f"[[jobs]] (topics: {', '.join(sorted(topics))})")
        if entry is not None:
            out.append(entry)
    return tuple(out)


def _build(doc: dict, ctx: _Ctx, file: Path) -> Config | None:
    _unknown(doc, list(SECTIONS), "", ctx)
    parts: dict[str, Any] = {}
    for name, section in SECTIONS.items():
        if name == "jobs":
            parts[name] = _jobs(doc.get(name), ctx, parts["redis"])
        elif name == "periodic":
            parts[name] = _periodic(doc.get(name), ctx, parts["jobs"])
        elif name in doc or not section.optional:
            parts[name] = _table(section.cls, doc.get(name, {}), name, ctx)
        else:
            parts[name] = None
    if parts["notifier"] is not None:
        _notifier_params(parts["notifier"], ctx)
    if not ctx.errors:
        _resolve_embedded(parts, ctx)
    return None if ctx.errors else Config(path=file, **parts)


# -- url = "embedded": one rule, applied at load, for every process on the host ------------

def embedded_socket(data_dir: Path) -> Path:
    """The Unix socket of the redis-server a master runs for ``data_dir``."""
    return Path(data_dir) / EMBEDDED_DIR_NAME / EMBEDDED_SOCKET_NAME


def embedded_url(data_dir: Path) -> str:
    """What url = "embedded" means: the socket of the master's redis-server, derived from
    process.data_dir alone, so master, workers, console commands and
    ``Producer.from_config`` all reach the same server."""
    return "unix://" + quote(str(embedded_socket(data_dir)))


def _resolve_embedded(parts: dict[str, Any], ctx: _Ctx) -> None:
    """Replace each RedisConfig whose url is "embedded" by one naming the socket (and
    ``embedded`` set). One server per host: every table that names it has its port."""
    data_dir = parts["process"].data_dir
    url, port = embedded_url(data_dir), None

    def resolve(rcfg: RedisConfig | None, path: str) -> RedisConfig | None:
        nonlocal port
        if rcfg is None or rcfg.url != EMBEDDED:
            return rcfg
        size = len(os.fsencode(embedded_socket(data_dir)))
        if size > MAX_SOCKET_PATH_BYTES:
            ctx.error(f"{path}.url", f'"{EMBEDDED}" puts its socket at '
                      f"{embedded_socket(data_dir)}, {size} bytes, and a Unix socket path "
                      f"holds at most {MAX_SOCKET_PATH_BYTES}: use a shorter process.data_dir")
        if port is None:
            port = rcfg.embedded_port
        elif rcfg.embedded_port != port:
            ctx.error(f"{path}.embedded_port", f"the embedded redis-server is one per host: "
                      f"its port is {port} in [redis], got {rcfg.embedded_port}")
        return replace(rcfg, url=url, embedded=True)

    parts["redis"] = resolve(parts["redis"], "redis")
    parts["jobs"] = tuple(replace(job, redis=resolve(job.redis, f"jobs[{i}].redis"))
                          for i, job in enumerate(parts["jobs"]))


def _notifier_params(notifier: NotifierConfig, ctx: _Ctx) -> None:
    """The params a built-in channel needs, checked now: not when the first alert fails."""
    channel = NOTIFIER_PARAMS.get(notifier.kind)
    if channel is None:  # "module:Class": its constructor decides (check imports it)
        return
    path, params, kind = "notifier.params", dict(notifier.params), show(notifier.kind)
    _unknown(params, list(channel.keys), path, ctx)
    for key, value in params.items():
        if key == "headers" and key in channel.keys:
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                ctx.error(f"{path}.{key}", f"must be a table of strings, got {_describe(value)}")
        elif key in channel.keys and not isinstance(value, str):
            ctx.error(f"{path}.{key}", f"must be a string, got {_describe(value)}")
    given = [k for k in channel.need if isinstance(params.get(k), str) and params[k]]
    if not given and len(channel.need) == 1:
        ctx.error(f"{path}.{channel.need[0]}", f"required for class {kind}")
    elif not given:
        ctx.error(path, f"class {kind} needs {' or '.join(channel.need)} (one of them)")
    elif len(given) > 1:
        ctx.error(path, f"class {kind} takes {' or '.join(given)}, not both")
    if "url" in given and (problem := http_url_problem(params["url"])):
        ctx.error(f"{path}.url", problem)


def _read(file: Path) -> tuple[dict, str]:
    """Parse the file; ConfigError with a hint when it is missing, unreadable or not TOML."""
    try:
        text = file.read_bytes().decode("utf-8")
        return tomllib.loads(text), text
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found (hint: {_HINT})", str(file)) from e
    except OSError as e:  # a directory, no permission, an I/O error
        raise ConfigError(f"cannot read the config file: {e.strerror} (hint: {_HINT})",
                          str(file)) from e
    except ValueError as e:  # not UTF-8, or not TOML
        raise ConfigError(f"invalid TOML: {e}", str(file)) from e


def _fail(ctx: _Ctx, text: str, file: Path) -> ConfigError:
    lines = key_lines(text)
    rows = sorted(((line_of(p, lines), p, m) for p, m in ctx.errors), key=lambda r: r[0] or 1e9)
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
    _register_secrets(config)
    return config


def _register_secrets(cfg: Config) -> None:
    """Tell :mod:`ssjobs.redact` the secrets this config holds, so that no line ssjobs
    prints, logs or sends shows them, even bare (a notifier's error quoting its token)."""
    for rcfg in {cfg.redis, *(job.redis for job in cfg.jobs if job.redis is not None)}:
        redact.register_url_secrets(rcfg.url)
    if cfg.notifier is not None:
        for key, value in cfg.notifier.params.items():
            if isinstance(value, str) and value.startswith(("http://", "https://")):
                redact.register_url_secrets(value, path_too=True)
            elif redact.looks_secret(key):
                redact.register_secret(value)
    if cfg.metrics is not None:
        redact.register_secret(cfg.metrics.token)
    if cfg.web is not None:
        redact.register_secret(cfg.web.token)


def load_data_dir(path: str | os.PathLike) -> Path:
    """Only ``process.data_dir``, whatever the rest holds (for stop, status and revive)."""
    file = _abspath(path)
    doc, text = _read(file)
    ctx, process = _Ctx(file.parent), doc.get("process")
    if not isinstance(process, dict) or "data_dir" not in process:
        ctx.error("process.data_dir", "required key is missing")
    else:
        try:
            return _to_path(process["data_dir"], ctx.base)
        except _Invalid as e:
            ctx.error("process.data_dir", str(e))
    raise _fail(ctx, text, file)


def find_config_path(cli_value: str | None = None) -> Path:
    """The ``-c`` value, else $SSJOBS_CONFIG, else ./ssjobs.toml; made absolute."""
    return _abspath(cli_value or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME)
