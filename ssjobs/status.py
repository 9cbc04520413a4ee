"""The status model (``status --json``, docs/reference.md): workers from the shared-memory
scoreboard, topic counters from Redis, the master from its pid/scoreboard header. How it is
shown to humans: ``ssjobs.console.statusview``.

``collect_status`` is called both by ``ssjobs status`` and by the master (which stores the
result as the status snapshot, ``status.json``, shown when the master is not running).
``rate_1m``: the master may pass its own figures as ``master_info["rates"]`` ({topic:
float}); otherwise ``ssjobs.rates`` keeps samples in data_dir.
"""
from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from . import __version__, problems
from .config import Config, embedded_socket
from .rates import update_rates
from .redact import redact, redact_url
from .runtime import RuntimeFiles, process_started_at
from .scoreboard import percentiles_ms, topic_histograms

WORKER_FIELDS = ("pid", "topic", "kind", "state", "processed", "failed", "started_at",
                 "rss_bytes", "job_started_at")
COUNTER_FIELDS = ("backlog", "delayed", "inflight", "dead", "processed", "failed")
# What only the master knows, kept in its snapshot: extension states ({"metrics": "on" or
# "off: why"}) and orphan topics ({topic: jobs waiting}, see ssjobs.orphans).
MASTER_NOTES = ("extensions", "orphan_topics")

if TYPE_CHECKING:
    from .broker import Brokers

_pools: dict[tuple[float, int], Brokers] = {}   # (timeout, pid) -> clients of status


EMBEDDED_DOWN = "the embedded redis-server is not running: it runs while the master does"

# -- collecting ------------------------------------------------------------------------------

def collect_status(cfg: Config | None, files: RuntimeFiles, *, running_pid: int | None = None,
                   master_info: dict | None = None, redis_timeout: float = 2.0) -> dict:
    """The `status --json` object.

    ``cfg`` None (the config file became invalid) still gives master and workers; topic
    counters then come from the last snapshot. When no master runs: the last snapshot, with
    ``running`` false (and ``snapshot_at``, the snapshot file's mtime).
    """
    info = dict(master_info or {})
    pid = running_pid or info.get("pid") or files.running_pid()
    if not pid:
        return _with_embedded(last_snapshot(files, cfg, redis_timeout), cfg, files)
    job_times: dict[str, list[int]] = {}
    workers, header = read_scoreboard(files, histograms=job_times)
    master = {
        "pid": pid,
        "started_at": info.get("started_at") or _started_at(pid, header),
        "node": info.get("node") or f"{socket.gethostname()}:{pid}",
        "version": info.get("version") or __version__,
    }
    status: dict[str, Any] = {"running": True, "master": master, "topics": {},
                              "workers": workers}
    if cfg is None:
        snapshot = files.read_snapshot() or {}
        topics = {t: dict(v) for t, v in (snapshot.get("topics") or {}).items()
                  if isinstance(v, dict)}
    else:
        topics, error = topic_counters(cfg, [w["topic"] for w in workers], redis_timeout)
        status["redis"] = "down" if error else "up"
        if error:
            status["redis_error"] = error
        rates = info.get("rates")
        if not isinstance(rates, dict):
            rates = update_rates(files, {t: c["processed"] for t, c in topics.items()
                                         if c.get("processed") is not None})
        for topic, counters in topics.items():
            counters["rate_1m"] = rates.get(topic, 0.0) if "redis_error" not in counters \
                else None
    for topic, counters in topics.items():
        counters["workers"] = {kind: sum(1 for w in workers
                                         if w["topic"] == topic and w["kind"] == kind)
                               for kind in ("static", "dynamic")}
        counters.update(percentiles_ms(job_times.get(topic)))
    status["topics"] = topics
    if cfg is not None and cfg.periodic:
        status["periodic"] = info.get("periodic") or periodic_view(cfg, redis_timeout)
    if "extensions" not in info:  # `ssjobs status`: what the running master last wrote down
        snapshot = files.read_snapshot() or {}
        if (snapshot.get("master") or {}).get("pid") == pid:
            info.update({k: snapshot[k] for k in MASTER_NOTES if k in snapshot})
    for key in MASTER_NOTES:
        if info.get(key):
            status[key] = info[key]
    # What the master runs without: its own registry in the master, else its last snapshot.
    found = problems.current() if master_info is not None else \
        (files.read_snapshot() or {}).get("problems")
    if found and isinstance(found, dict):
        status["problems"] = {str(k): redact(str(v)) for k, v in found.items()}
    return _with_embedded(status, cfg, files)


def _with_embedded(status: dict, cfg: Config | None, files: RuntimeFiles) -> dict:
    """``embedded_redis``: the server of url = "embedded", as it is now (ssjobs.embedded)."""
    from .embedded import describe

    configured = cfg is not None and cfg.embedded_redis is not None
    status.pop("embedded_redis", None)  # a snapshot's is stale
    if (found := describe(files.dir, configured=configured)) is not None:
        status["embedded_redis"] = found
    return status


def last_snapshot(files: RuntimeFiles, cfg: Config | None = None,
                  redis_timeout: float = 2.0) -> dict:
    """What the master wrote last, marked not running. Before the first start there is no
    snapshot: then the configured topics, with their counters from Redis."""
    snapshot = files.read_snapshot()
    if snapshot is None and cfg is not None:
        topics, error = topic_counters(cfg, [], redis_timeout)
        for counters in topics.values():
            counters["workers"] = {"static": 0, "dynamic": 0}
        never: dict[str, Any] = {"running": False, "master": None, "topics": topics,
                                 "workers": [], "redis": "down" if error else "up",
                                 "snapshot_at": None}
        if error:
            never["redis_error"] = error
        return never
    snapshot = snapshot or {}
    status: dict[str, Any] = {"running": False, "master": snapshot.get("master"),
                              "topics": snapshot.get("topics") or {},
                              "workers": snapshot.get("workers") or []}
    for key, value in snapshot.items():
        status.setdefault(key, value)
    try:
        status["snapshot_at"] = files.snapshot_path.stat().st_mtime
    except OSError:
        status["snapshot_at"] = None
    return status


def read_scoreboard(files: RuntimeFiles, *, histograms: dict[str, list[int]] | None = None
                    ) -> tuple[list[dict], dict | None]:
    """This host's workers (the documented fields) and the scoreboard header; ([], None) when the
    scoreboard is missing or not (yet) valid. ``histograms``, if given, receives the job-time
    histogram of each topic (summed over its live workers)."""
    from .scoreboard import read_board

    found = read_board(files.scoreboard_path)
    if found is None:
        return [], None
    slots, header = found
    if histograms is not None:
        histograms.update(topic_histograms(slots))
    workers = [{k: slot[k] for k in WORKER_FIELDS} for slot in slots]
    workers.sort(key=lambda w: (w["topic"], w["kind"] != "static", w["started_at"]))
    return workers, header


def topic_counters(cfg: Config, extra_topics: list[str],
                   timeout: float) -> tuple[dict[str, dict], str | None]:
    """Redis counters of every configured topic (then of ``extra_topics``, e.g. a topic a
    not-yet-reloaded master still runs). A Redis that fails is asked once: its topics get
    ``"redis_error"`` and None counters; the first error is returned too."""
    jobs = {job.topic: cfg.redis_for(job) for job in cfg.jobs}
    for topic in extra_topics:
        jobs.setdefault(topic, cfg.redis)
    failed: dict[str, str] = {}
    if cfg.embedded_redis is not None and not embedded_socket(cfg.process.data_dir).exists():
        failed[cfg.embedded_redis.url] = EMBEDDED_DOWN  # not worth a connection attempt
    topics: dict[str, dict] = {}
    first_error = None
    for topic, rcfg in jobs.items():
        error = failed.get(rcfg.url)
        if error is None:
            try:
                counts = _brokers(timeout).broker(rcfg, topic).counts()
                topics[topic] = {k: counts[k] for k in COUNTER_FIELDS}
                topics[topic]["throttled"] = bool(counts["throttled"])
                continue
            except Exception as exc:  # noqa: BLE001 - any Redis failure: report and go on
                error = failed[rcfg.url] = redact(f"redis {redact_url(rcfg.url)}: {_describe(exc)}")
        first_error = first_error or error
        topics[topic] = {**dict.fromkeys(COUNTER_FIELDS), "redis_error": error}
    return topics, first_error


def periodic_view(cfg: Config, timeout: float) -> list[dict]:
    """The schedules seen from outside a master: their last ticks from Redis (None when
    Redis does not answer)."""
    from .periodic import Schedule, view_of

    redis_of = {job.topic: cfg.redis_for(job) for job in cfg.jobs}
    last: dict[str, float | None] = {}
    for entry in cfg.periodic:
        schedule = Schedule(entry)
        try:
            broker = _brokers(timeout).broker(redis_of[entry.topic], entry.topic)
            last[schedule.id] = broker.last_tick(schedule.id)
        except Exception:  # noqa: BLE001 - Redis down: the topics table says so
            last[schedule.id] = None
    return view_of(cfg.periodic, last, time.time())


def _brokers(timeout: float) -> Brokers:
    """Clients cached per process (a forked child makes its own) and timeout."""
    from .broker import Brokers

    key = (timeout, os.getpid())
    pool = _pools.get(key)
    if pool is None:
        pool = _pools[key] = Brokers(socket_timeout=timeout, connect_timeout=timeout)
    return pool


def cached_clients() -> list[Any]:
    """The clients :func:`_brokers` made (the master lists their connections among the fds
    its forked workers must close)."""
    return [client for pool in _pools.values() for client in pool.clients.values()]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


def _started_at(pid: int, header: dict | None) -> float | None:
    if header and header.get("master_pid") == pid and header.get("started_at"):
        return float(header["started_at"])
    return process_started_at(pid)
