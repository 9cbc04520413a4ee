"""The status model (``status --json``, docs/deploy.md): workers from the shared-memory
scoreboard, topic counters from Redis, the master from its pid/scoreboard header; rendered
as tables for humans.

``collect_status`` is called both by ``ssjobs status`` and by the master (which stores the
result as the status snapshot, ``status.json``, shown when the master is not running).

``rate_1m`` (jobs/s over the last minute, fleet-wide like the ``processed`` counter it comes
from): the master may pass its own figures as ``master_info["rates"]`` ({topic: float});
otherwise every call records the topics' ``processed`` counters in ``rates.json`` in data_dir
(a few samples, at most one per ``RATE_SAMPLE_EVERY_S``, kept ``RATE_KEEP_S``) and the rate is
the counter's growth since the sample closest to one minute ago. The master refreshes the
snapshot periodically, so the samples are there whenever a master runs.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from . import __version__, problems
from .config import Config
from .metrics import percentiles_ms, topic_histograms
from .redact import redact, redact_url
from .runtime import RuntimeFiles, proc_stat, read_file, write_atomic
from .text import plural

RATES_NAME = "rates.json"
RATE_WINDOW_S = 60.0         # rate_1m: the window the rate is measured over
RATE_SAMPLE_EVERY_S = 2.0    # fewer samples than this apart add nothing but file writes
RATE_KEEP_S = 180.0          # samples older than this cannot serve a one-minute window
WORKER_FIELDS = ("pid", "topic", "kind", "state", "processed", "failed", "started_at",
                 "rss_bytes", "job_started_at")
COUNTER_FIELDS = ("backlog", "delayed", "inflight", "dead", "processed", "failed")
# What only the master knows, kept in its snapshot: extension states ({"metrics": "on" or
# "off: why"}) and orphan topics ({topic: jobs waiting}, see ssjobs.orphans).
MASTER_NOTES = ("extensions", "orphan_topics")

_clients: dict[tuple[str, float, int], Any] = {}  # (url, timeout, pid) -> redis client


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
    from .scoreboard import Scoreboard

    try:
        board = Scoreboard.open(files.scoreboard_path)
    except (OSError, ValueError):
        return [], None
    try:
        slots = board.workers()
        header = board.header()
    finally:
        board.close()
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
    from .broker import Broker

    jobs = {job.topic: cfg.redis_for(job) for job in cfg.jobs}
    for topic in extra_topics:
        jobs.setdefault(topic, cfg.redis)
    failed: dict[str, str] = {}
    topics: dict[str, dict] = {}
    first_error = None
    for topic, rcfg in jobs.items():
        error = failed.get(rcfg.url)
        if error is None:
            try:
                counts = Broker(_client(rcfg.url, timeout), rcfg.prefix, topic).counts()
                topics[topic] = {k: counts[k] for k in COUNTER_FIELDS}
                continue
            except Exception as exc:  # noqa: BLE001 - any Redis failure: report and go on
                error = failed[rcfg.url] = redact(f"redis {redact_url(rcfg.url)}: {_describe(exc)}")
        first_error = first_error or error
        topics[topic] = {**dict.fromkeys(COUNTER_FIELDS), "redis_error": error}
    return topics, first_error


def _client(url: str, timeout: float) -> Any:
    """One cached client per URL and process (a forked child makes its own)."""
    from .broker import connect

    key = (url, timeout, os.getpid())
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = connect(url, socket_timeout=timeout, connect_timeout=timeout)
    return client


def cached_clients() -> list[Any]:
    """The clients :func:`_client` made (the master lists their connections among the fds
    its forked workers must close)."""
    return list(_clients.values())


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


def _started_at(pid: int, header: dict | None) -> float | None:
    if header and header.get("master_pid") == pid and header.get("started_at"):
        return float(header["started_at"])
    return process_start_time(pid)


def process_start_time(pid: int) -> float | None:
    """Epoch seconds when ``pid`` started (from /proc), or None."""
    fields = proc_stat(pid)
    if fields is None:
        return None
    try:
        ticks = int(fields[19])
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


# -- rate_1m ---------------------------------------------------------------------------------

def update_rates(files: RuntimeFiles, processed: dict[str, int],
                 now: float | None = None) -> dict[str, float]:
    """Record ``processed`` in rates.json and return jobs/s per topic over ~the last minute."""
    now = time.time() if now is None else now
    path = files.dir / RATES_NAME
    samples = _read_samples(path)
    rates = compute_rates(samples, processed, now)
    samples = [s for s in samples if now - RATE_KEEP_S <= s[0] <= now]
    if not samples or now - samples[-1][0] >= RATE_SAMPLE_EVERY_S:
        samples.append((now, dict(processed)))
        try:
            write_atomic(path, json.dumps({"samples": samples}).encode(), mode=0o644)
        except OSError:
            pass  # a read-only data_dir (status run as another user): rates just stay 0
    return rates


def compute_rates(samples: list[tuple[float, dict[str, int]]], processed: dict[str, int],
                  now: float) -> dict[str, float]:
    """Pure: per topic, growth of ``processed`` since the sample nearest to RATE_WINDOW_S ago
    (at least RATE_SAMPLE_EVERY_S old), per second. 0.0 without such a sample or when the
    counter went down (Redis flushed)."""
    rates = {}
    for topic, count in processed.items():
        best = None
        for t, counts in samples:
            age = now - t
            if RATE_SAMPLE_EVERY_S <= age <= RATE_KEEP_S and topic in counts:
                if best is None or abs(age - RATE_WINDOW_S) < abs(now - best[0] - RATE_WINDOW_S):
                    best = (t, counts[topic])
        if best is None or count < best[1]:
            rates[topic] = 0.0
        else:
            rates[topic] = round((count - best[1]) / (now - best[0]), 2)
    return rates


def _read_samples(path: os.PathLike) -> list[tuple[float, dict[str, int]]]:
    try:
        raw = json.loads(read_file(Path(path))).get("samples", [])
        return [(float(t), {str(k): int(v) for k, v in counts.items()}) for t, counts in raw]
    except (OSError, ValueError, TypeError, AttributeError):
        return []


# -- rendering -------------------------------------------------------------------------------

def render_status(status: dict, *, now: float | None = None) -> Any:
    """Tables for humans: a rich renderable when rich is installed, else plain text."""
    now = time.time() if now is None else now
    title = _headline(status, now)
    if status.get("embedded_redis"):
        from .embedded import status_line

        title += "\n" + status_line(status["embedded_redis"], bool(status.get("running")))
    topic_rows = [[topic, *(_num(c.get(k)) for k in ("backlog", "delayed", "inflight", "dead",
                                                       "processed", "failed")),
                   _rate(c.get("rate_1m")), _ms(c.get("p50_ms")), _ms(c.get("p95_ms")),
                   _workers(c.get("workers"))]
                  for topic, c in (status.get("topics") or {}).items()]
    topic_head = ["topic", "backlog", "delayed", "inflight", "dead", "processed", "failed",
                  "rate/s", "p50", "p95", "workers"]
    worker_rows = [[str(w.get("pid")), str(w.get("topic")), str(w.get("kind")),
                    str(w.get("state")), _num(w.get("processed")), _num(w.get("failed")),
                    _age(w.get("started_at"), now), _bytes(w.get("rss_bytes")),
                    _age(w.get("job_started_at"), now)]
                   for w in status.get("workers") or []]
    worker_head = ["pid", "topic", "kind", "state", "processed", "failed", "up", "rss",
                   "job for"]
    notes = [f"redis: down ({e})" for e in sorted(
        {c["redis_error"] for c in (status.get("topics") or {}).values()
         if isinstance(c, dict) and c.get("redis_error")})]
    notes += [f"{name} {state}" for name, state in (status.get("extensions") or {}).items()
              if state != "on"]
    notes += [f"orphan topic {topic!r}: {plural(n, 'job')} waiting, but no config here "
              "declares it and no worker serves it (a typo? see `ssjobs check`)"
              for topic, n in (status.get("orphan_topics") or {}).items()]
    notes += [str(v) for v in (status.get("problems") or {}).values()]
    try:
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        parts = [title, "", _plain_table(topic_head, topic_rows) if topic_rows
                 else "no topics in the config"]
        parts += ["", _plain_table(worker_head, worker_rows) if worker_rows else "no workers"]
        return "\n".join(parts + [f"! {n}" for n in notes])

    def table(head: list[str], rows: list[list[str]], caption: str) -> Table:
        t = Table(title=caption, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                  pad_edge=False)
        for i, name in enumerate(head):
            widest = max((len(row[i]) for row in rows), default=0)
            left = name in ("topic", "kind", "state")
            t.add_column(name, justify="left" if left else "right", no_wrap=True,
                         min_width=min(widest, 24) if name in ("topic", "pid") else None)
        for row in rows:
            t.add_row(*row)
        return t

    style = "bold green" if status.get("running") else "bold red"
    items: list[Any] = [Text(title, style=style)]
    items.append(table(topic_head, topic_rows, "topics") if topic_rows
                 else Text("no topics in the config"))
    items.append(table(worker_head, worker_rows, "workers (this host)") if worker_rows
                 else Text("no workers"))
    items += [Text(n, style="yellow") for n in notes]
    return Group(*items)


def _headline(status: dict, now: float) -> str:
    master = status.get("master") or {}
    if status.get("running"):
        return (f"ssjobs running: master pid {master.get('pid')} on {master.get('node')}, "
                f"up {_age(master.get('started_at'), now)}, version {master.get('version')}")
    if not master:
        return "ssjobs is not running (never started on this data_dir)"
    when = status.get("snapshot_at")
    ago = f" from {_age(when, now)} ago" if when else ""
    return f"ssjobs is not running; last snapshot{ago} (master pid {master.get('pid')}):"


def _plain_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    def line(row: list[str]) -> str:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    return "\n".join(line(row) for row in [head, *rows])


def _num(v: Any) -> str:
    return "-" if v is None else str(v)


def _rate(v: Any) -> str:
    return "-" if v is None else f"{float(v):.2f}"


def _ms(v: Any) -> str:
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.2f}ms" if v < 10 else f"{v:.0f}ms" if v < 1000 else f"{v / 1000:.2f}s"


def _workers(v: Any) -> str:
    return f"{v.get('static', 0)}+{v.get('dynamic', 0)}" if isinstance(v, dict) else "-"


def _age(since: Any, now: float) -> str:
    if not since:
        return "-"
    s = max(0, int(now - float(since)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _bytes(v: Any) -> str:
    if not v:
        return "-"
    n = float(v)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(v)
