"""What the dashboard shows, as plain dicts (the JSON API returns them as they are; the
pages render them). Nothing here knows about HTTP.

- The overview is :func:`ssjobs.status.collect_status` (what ``status --json`` prints) plus
  the fleet, read from the heartbeat keys every master refreshes each second
  (``P:nodes``, ``P:node:NODE``: see docs/protocol.md), and per topic the jobs/s of recent
  minutes, from samples this process takes (:class:`History`). :class:`Dashboard` computes
  it every ``SAMPLE_EVERY_S`` in the background, so any number of open pages costs Redis the
  same as one.
- Dead letters go through :mod:`ssjobs.console.dead`, the code of ``ssjobs dead ...``.
- Tracked jobs through ``ssjobs.tracking`` (``read``/``cancel``), when this build has it.

Every Redis failure becomes :class:`~ssjobs.errors.BrokerUnavailable` with a redacted line
(:func:`ssjobs.console.common.redis_errors`, as for ``ssjobs dead``).
"""
from __future__ import annotations

import bisect
import json
import socket
import threading
import time
from collections import deque
from typing import Any

import redis

from .. import tracking
from ..broker import Broker, connect, node_key, nodes_key
from ..config import Config, JobConfig
from ..console import dead
from ..console.common import redis_errors
from ..errors import BrokerUnavailable
from ..master import SUMMARY_WORKER_FIELDS
from ..redact import redact
from ..runtime import RuntimeFiles
from ..scoreboard import read_board
from ..status import collect_status, topic_counters

SAMPLE_EVERY_S = 2.0        # the overview is recomputed this often (pages poll every 3 s)
REDIS_TIMEOUT_S = 3.0       # a page waits at most this for one Redis
SPARK_MINUTES = 30          # the sparkline: jobs/s in each of the last 30 minutes
DEAD_PAGE = 25              # dead letters per page of the topic page
PREVIEW_CHARS = 300         # payload and message shown in the dead-letter list
FULL_TEXT_CHARS = 200_000   # a payload or traceback longer than this is cut on its page



class History:
    """Per topic, (time, processed) samples of the last SPARK_MINUTES: jobs/s per minute."""

    def __init__(self, minutes: int = SPARK_MINUTES) -> None:
        self.minutes = minutes
        self.samples: dict[str, deque[tuple[float, int]]] = {}

    def add(self, now: float, processed: dict[str, int | None]) -> None:
        keep = self.minutes * 60 + 60
        for topic, count in processed.items():
            if count is None:
                continue
            samples = self.samples.setdefault(topic, deque())
            if samples and count < samples[-1][1]:
                samples.clear()    # the counter went down: Redis lost its data
            samples.append((now, count))
            while samples and samples[0][0] < now - keep:
                samples.popleft()

    def per_minute(self, topic: str, now: float) -> list[float | None]:
        """Jobs/s in each of the last ``minutes`` one-minute windows ending now, oldest
        first; None where no sample reaches that far back (the page was not running). The
        last one, the rate of the last minute, covers less while the samples are younger."""
        samples = list(self.samples.get(topic, ()))
        times = [t for t, _ in samples]

        def at(t: float) -> tuple[float, int] | None:       # the last sample at or before t
            i = bisect.bisect_right(times, t)
            return samples[i - 1] if i else None

        out: list[float | None] = []
        for k in range(self.minutes, 0, -1):
            first, last = at(now - 60 * k), at(now - 60 * (k - 1))
            if first is None or last is None or last[0] <= first[0]:
                out.append(None)
            else:
                out.append(round((last[1] - first[1]) / (last[0] - first[0]), 2))
        if out[-1] is None and len(samples) >= 2:   # younger than a minute: since the start
            (t0, c0), (t1, c1) = samples[0], samples[-1]
            out[-1] = round((c1 - c0) / (t1 - t0), 2) if t1 > t0 else None
        return out


class Dashboard:
    """The data of every page, for one config. Thread-safe: handlers run in a thread pool."""

    def __init__(self, cfg: Config, *, read_only: bool = False) -> None:
        self.cfg = cfg
        self.read_only = read_only
        self.files = RuntimeFiles(cfg.process.data_dir)
        self.history = History()
        self._clients: dict[str, redis.Redis] = {}
        self._brokers: dict[str, Broker] = {}
        self._lock = threading.Lock()
        self._overview: dict | None = None
        self.hostname = socket.gethostname()

    # -- Redis ------------------------------------------------------------------------
    def _client(self, url: str) -> redis.Redis:
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                client = self._clients[url] = connect(url, socket_timeout=REDIS_TIMEOUT_S,
                                                      connect_timeout=REDIS_TIMEOUT_S)
            return client

    def job_config(self, topic: str) -> JobConfig:
        """The topic's [[jobs]] entry; KeyError for a topic the config does not declare."""
        return self.cfg.job(topic)

    def broker(self, topic: str) -> tuple[Broker, str]:
        """The topic's broker and its Redis URL (KeyError: not in the config)."""
        job = self.cfg.job(topic)
        rcfg = self.cfg.redis_for(job)
        with self._lock:
            broker = self._brokers.get(topic)
        if broker is None:
            broker = Broker(self._client(rcfg.url), rcfg.prefix, topic)
            with self._lock:
                self._brokers[topic] = broker
        return broker, rcfg.url

    def close(self) -> None:
        with self._lock:
            clients, self._clients, self._brokers = list(self._clients.values()), {}, {}
        for client in clients:
            client.close()

    # -- overview ---------------------------------------------------------------------
    def overview(self) -> dict:
        """The latest overview (computed now if there is none yet)."""
        with self._lock:
            current = self._overview
        return current if current is not None else self.refresh()

    def refresh(self, now: float | None = None) -> dict:
        """Recompute the overview: status, fleet, rates. Never raises for Redis."""
        now = time.time() if now is None else now
        status = collect_status(self.cfg, self.files, redis_timeout=REDIS_TIMEOUT_S)
        if not status.get("running"):
            # no master here (or a dashboard-only host): counters live, not from a snapshot
            topics, error = topic_counters(self.cfg, [], REDIS_TIMEOUT_S)
            for counters in topics.values():
                counters["workers"] = {"static": 0, "dynamic": 0}
            status["topics"], status["redis"] = topics, "down" if error else "up"
            status.pop("redis_error", None)
            if error:
                status["redis_error"] = error
        topics = status.get("topics") or {}
        self.history.add(now, {t: c.get("processed") for t, c in topics.items()})
        for topic, counters in topics.items():
            counters["history"] = self.history.per_minute(topic, now)
            if counters.get("processed") is not None:
                counters["rate_1m"] = counters["history"][-1]
            counters.update(self._topic_notes(topic))
        hosts, fleet_error = self.fleet(status)
        overview = {"at": now, "read_only": self.read_only, **status, "hosts": hosts}
        if fleet_error and not status.get("redis_error"):
            overview["redis_error"] = fleet_error
        with self._lock:
            self._overview = overview
        return overview

    def _topic_notes(self, topic: str) -> dict:
        """Markers from the topic's config: flow control, periodic schedules."""
        try:
            job = self.cfg.job(topic)
        except KeyError:
            return {"configured": False}
        notes: dict[str, Any] = {"configured": True}
        for name in ("rate_limit", "concurrency"):   # flow control, where this build has it
            value = getattr(job, name, None)
            if value:
                notes[name] = value
        schedules = [p for p in getattr(self.cfg, "periodic", None) or ()
                     if getattr(p, "topic", None) == topic]
        notes["periodic"] = bool(schedules)
        return notes

    # -- fleet ------------------------------------------------------------------------
    def fleet(self, status: dict) -> tuple[list[dict], str | None]:
        """Every host: from the heartbeats in each Redis of the config; this host's workers
        from its scoreboard (fresher than its heartbeat, and there while Redis is down)."""
        prefix = self.cfg.redis.prefix
        urls = list(dict.fromkeys([self.cfg.redis.url,
                                   *(j.redis.url for j in self.cfg.jobs if j.redis)]))
        nodes: dict[str, dict] = {}
        error = None
        for url in urls:
            try:
                with redis_errors(url):
                    for node, summary in read_heartbeats(self._client(url), prefix).items():
                        nodes.setdefault(node, summary)
            except BrokerUnavailable as exc:
                error = error or str(exc)
        local = self._local_host(status)
        if local is not None:
            mine = next((n for n in nodes if n.startswith(local["node"] + ":")
                         or n == local["node"]), None)
            if mine is not None:
                local = {**nodes.pop(mine), "node": mine, "alive": True,
                         "workers": local["workers"], "this_host": True}
            hosts = [local]
        else:
            hosts = []
        hosts += sorted(nodes.values(), key=lambda h: (h.get("host") or "", h["node"]))
        return hosts, error

    def _local_host(self, status: dict) -> dict | None:
        master = status.get("master") or {}
        if not status.get("running") or not master.get("pid"):
            return None
        return {"node": master.get("node") or f"{self.hostname}:{master['pid']}",
                "host": self.hostname, "pid": master["pid"],
                "started_at": master.get("started_at"), "version": master.get("version"),
                "alive": True, "this_host": True, "workers": self.local_workers()}

    def local_workers(self) -> list[dict]:
        """This host's workers, from the shared-memory scoreboard (as the summary has them)."""
        read = read_board(self.files.scoreboard_path)
        if read is None:
            return []
        workers = [{k: slot[k] for k in SUMMARY_WORKER_FIELDS} for slot in read[0]]
        return sorted(workers, key=_worker_order)

    # -- one topic --------------------------------------------------------------------
    def topic(self, topic: str) -> dict:
        """Counters (live), settings and workers (every host) of one topic."""
        job = self.cfg.job(topic)
        broker, url = self.broker(topic)
        with redis_errors(url):
            counts = broker.counts()
        overview = self.overview()
        counters = dict((overview.get("topics") or {}).get(topic) or {})
        counters.update(counts)
        workers = [{**w, "host": h.get("host"), "node": h["node"]}
                   for h in overview.get("hosts") or [] for w in h.get("workers") or []
                   if w.get("topic") == topic]
        settings = {name: getattr(job, name) for name in (
            "consumer", "static_workers", "dynamic_workers", "queue_health_size",
            "job_timeout", "max_retries", "retry_backoff", "batch_size", "rate_limit",
            "concurrency", "track") if getattr(job, name, None) not in (None, "")}
        return {"topic": topic, "at": time.time(), "counters": counters,
                "settings": settings, "workers": workers, "read_only": self.read_only}

    def dead_letters(self, topic: str, start: int = 0, limit: int = DEAD_PAGE) -> dict:
        """A page of the topic's dead letters, newest first, each summarised."""
        broker, url = self.broker(topic)
        with redis_errors(url):
            total = int(broker.client.llen(broker.keys.dead))  # type: ignore[arg-type]
            raws = broker.dead_range(start, start + limit - 1) if limit else []
        entries = []
        for raw in raws:
            entry = dead.Entry(raw)
            row = entry.summary()
            row["message"] = redact(str(row.get("message") or ""))
            row["retryable"] = not entry.malformed
            payload = dead.payload_text(entry.job.payload) if entry.job else entry.problem
            row["preview"] = _cut(payload, PREVIEW_CHARS)
            entries.append(row)
        return {"topic": topic, "total": total, "start": start, "limit": limit,
                "entries": entries}

    def dead_letter(self, topic: str, job_id: str) -> dict:
        """One dead letter in full (ControlError when no dead job has that id)."""
        broker, url = self.broker(topic)
        with redis_errors(url):
            entry = dead.find(broker, [job_id])[job_id]
        job, err = entry.job, entry.error
        assert job is not None   # find() matches decodable entries only
        return {
            "topic": topic, "id": job.id, "attempts": job.attempts,
            "enqueued_at": job.enqueued_at, "retryable": not entry.malformed,
            "error": {"reason": err.get("reason"), "type": err.get("type"),
                      "message": redact(str(err.get("message") or "")),
                      "traceback": _cut(redact(str(err.get("traceback") or "")),
                                        FULL_TEXT_CHARS),
                      "failed_at": err.get("failed_at"), "worker": err.get("worker")},
            "history": [{**note, "message": redact(str(note.get("message") or ""))}
                        for note in job.headers.get("history") or []
                        if isinstance(note, dict)],
            "payload": _cut(dead.payload_text(job.payload), FULL_TEXT_CHARS),
        }

    # -- actions (the caller has checked authentication, CSRF and read_only) -----------
    def retry(self, topic: str, job_ids: list[str] | None) -> dict[str, int]:
        """Requeue these dead jobs (or all): ``ssjobs dead retry``."""
        broker, url = self.broker(topic)
        with redis_errors(url):
            return dead.requeue(broker, job_ids or None)

    def purge(self, topic: str, seen: int | None = None) -> int:
        """Delete the ``seen`` oldest dead jobs (what the page showed; None: all now)."""
        broker, url = self.broker(topic)
        with redis_errors(url):
            count = int(broker.client.llen(broker.keys.dead))  # type: ignore[arg-type]
            if seen is not None:
                count = min(count, max(0, seen))
            return broker.dead_drop_oldest(count) if count else 0

    # -- tracked jobs and schedules (optional parts of ssjobs) -------------------------
    def job(self, topic: str, job_id: str) -> dict:
        """A tracked job's record: ``"tracked": False`` when the topic does not track,
        ``"record": None`` for an unknown or expired id."""
        job = self.cfg.job(topic)
        out: dict[str, Any] = {"topic": topic, "id": job_id, "tracked": job.track,
                               "record": None, "read_only": self.read_only}
        broker, url = self.broker(topic)
        with redis_errors(url):
            record = tracking.read(broker.client, broker.keys, job_id)
        if record is not None:
            record = dict(record)
            error = record.get("error")
            if isinstance(error, dict):
                record["error"] = {k: redact(str(v)) if v is not None else None
                                   for k, v in error.items()}
            record["result_text"] = (None if record.get("result") is None
                                     else _cut(dead.payload_text(record["result"]),
                                               FULL_TEXT_CHARS))
            record["finished"] = record.get("state") in tracking.FINISHED
        out["record"] = record
        return out

    def cancel(self, topic: str, job_id: str) -> str | None:
        """Cancel a tracked job: the state it found (None: unknown)."""
        self.cfg.job(topic)
        broker, url = self.broker(topic)
        with redis_errors(url):
            return tracking.cancel(broker.client, broker.keys, job_id)

    def periodic(self) -> list[dict] | None:
        """The schedules ``status`` reports (topic, schedule, next/last run), or None when
        this build or config has none."""
        schedules = self.overview().get("periodic")
        return list(schedules) if isinstance(schedules, list) else None


def read_heartbeats(client: redis.Redis, prefix: str) -> dict[str, dict]:
    """Node -> its heartbeat summary (``alive`` False: listed in ``P:nodes`` but its key
    has expired, so the other masters are about to recover its jobs)."""
    members: set[bytes] = client.smembers(nodes_key(prefix))  # type: ignore[assignment]
    nodes = sorted(m.decode(errors="replace") for m in members)
    if not nodes:
        return {}
    pipe = client.pipeline(transaction=False)
    for node in nodes:
        pipe.get(node_key(prefix, node))
    out = {}
    for node, value in zip(nodes, pipe.execute(), strict=True):
        summary = _summary(value)
        host, _, rest = node.partition(":")
        out[node] = {"host": summary.get("host") or host,
                     "pid": summary.get("pid") or rest.partition(":")[0] or None,
                     "started_at": summary.get("started_at"),
                     "version": summary.get("version"),
                     "restarts": summary.get("restarts") or {},
                     **{k: v for k, v in summary.items() if k not in ("workers", "node")},
                     "node": node, "alive": value is not None, "this_host": False,
                     "workers": sorted(_workers_of(summary), key=_worker_order)}
    return out


def _summary(value: bytes | None) -> dict:
    if value is None:
        return {}
    try:
        summary = json.loads(value)
    except ValueError:
        return {}
    return summary if isinstance(summary, dict) else {}


def _workers_of(summary: dict) -> list[dict]:
    workers = summary.get("workers")
    if not isinstance(workers, list):
        return []
    return [{k: w.get(k) for k in SUMMARY_WORKER_FIELDS} for w in workers if isinstance(w, dict)]


def _worker_order(w: dict) -> tuple:
    return (str(w.get("topic")), w.get("kind") != "static", w.get("pid") or 0)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… ({len(text) - limit:,} more characters)"
