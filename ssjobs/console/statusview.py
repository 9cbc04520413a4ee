"""``ssjobs status``: the status model (``ssjobs.status``) as tables for humans, the
``--json`` object, and ``--watch``."""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config, load_config, load_data_dir
from ..errors import ConfigError
from ..runtime import RuntimeFiles, StopSignals
from ..text import age, milliseconds, plural, size, when
from .output import config_error_lines, fail, say

EXIT_OK = 0
EXIT_NOT_RUNNING = 3     # no master runs on this data_dir
WATCH_INTERVAL_S = 1.0   # `status --watch` refresh period
PIPE_WIDTH = 160         # columns of the tables written to a pipe or file


def load_for_status(cfg_path: str | os.PathLike) -> tuple[Config | None, Path]:
    """The config when valid (for Redis counters), else None with only process.data_dir
    (and a warning): status must work when the rest of the file has since become invalid."""
    try:
        cfg = load_config(cfg_path)
        return cfg, cfg.process.data_dir
    except ConfigError as exc:
        data_dir = load_data_dir(cfg_path)  # raises when even data_dir is unusable
        first = config_error_lines(exc)[0]
        more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
        fail(f"warning: config invalid, showing what needs only process.data_dir: "
             f"{first}{more}")
        return None, data_dir


def status(cfg_path: str | os.PathLike, *, as_json: bool = False, watch: bool = False) -> int:
    """Print the status; 0 when a master runs, 3 when not (then the last snapshot)."""
    from ..status import collect_status

    cfg, data_dir = load_for_status(cfg_path)
    files = RuntimeFiles(data_dir)

    def collect() -> dict:
        return collect_status(cfg, files)

    if watch:
        return _watch(collect, as_json)
    current = collect()
    _print_status(current, as_json)
    return EXIT_OK if current["running"] else EXIT_NOT_RUNNING


def _print_status(current: dict, as_json: bool) -> None:
    if as_json:
        say(json.dumps(current, indent=2))
        return
    rendered = render_status(current)
    if isinstance(rendered, str):
        say(rendered)
    else:
        from rich.console import Console

        # Piped: no terminal width to fit, so do not squeeze the tables into 80 columns.
        width = None if sys.stdout.isatty() else PIPE_WIDTH
        Console(highlight=False, width=width).print(rendered)


def _watch(collect: Callable[[], dict], as_json: bool) -> int:
    """Refresh every WATCH_INTERVAL_S until Ctrl-C; the exit status of the last view."""
    current = collect()
    with StopSignals() as stop:
        if not as_json and sys.stdout.isatty():
            try:
                from rich.live import Live
            except ImportError:
                pass
            else:
                with Live(render_status(current), auto_refresh=False, screen=False) as live:
                    while not stop.wait(WATCH_INTERVAL_S) and not stop.received:
                        current = collect()
                        live.update(render_status(current), refresh=True)
                return EXIT_OK if current["running"] else EXIT_NOT_RUNNING
        while not stop.received:
            _print_status(current, as_json)
            if not as_json:
                say("")
            stop.wait(WATCH_INTERVAL_S)
            if not stop.received:
                current = collect()
    return EXIT_OK if current["running"] else EXIT_NOT_RUNNING


def render_status(status: dict, *, now: float | None = None) -> Any:
    """Tables for humans: a rich renderable when rich is installed, else plain text."""
    now = time.time() if now is None else now
    title = _headline(status, now)
    if status.get("embedded_redis"):
        from ..embedded import status_line

        title += "\n" + status_line(status["embedded_redis"], bool(status.get("running")))
    topic_rows = [[topic, *(_num(c.get(k)) for k in ("backlog", "delayed", "inflight", "dead",
                                                       "processed", "failed")),
                   _rate(c.get("rate_1m")), milliseconds(c.get("p50_ms")),
                   milliseconds(c.get("p95_ms")),
                   _workers(c.get("workers"))]
                  for topic, c in (status.get("topics") or {}).items()]
    topic_head = ["topic", "backlog", "delayed", "inflight", "dead", "processed", "failed",
                  "rate/s", "p50", "p95", "workers"]
    worker_rows = [[str(w.get("pid")), str(w.get("topic")), str(w.get("kind")),
                    str(w.get("state")), _num(w.get("processed")), _num(w.get("failed")),
                    age(w.get("started_at"), now), size(w.get("rss_bytes")),
                    age(w.get("job_started_at"), now)]
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
    notes += [f"topic {topic!r} is throttled: its rate_limit or concurrency holds jobs back"
              for topic, c in (status.get("topics") or {}).items()
              if isinstance(c, dict) and c.get("throttled")]
    periodic_rows = [[str(p.get("topic")), str(p.get("schedule")),
                      when(p.get("next_run_at")), when(p.get("last_run_at"))]
                     for p in status.get("periodic") or []]
    periodic_head = ["topic", "schedule", "next run", "last run"]
    try:
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        parts = [title, "", _plain_table(topic_head, topic_rows) if topic_rows
                 else "no topics in the config"]
        parts += ["", _plain_table(worker_head, worker_rows) if worker_rows else "no workers"]
        if periodic_rows:
            parts += ["", _plain_table(periodic_head, periodic_rows)]
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
    if periodic_rows:
        items.append(table(periodic_head, periodic_rows, "periodic"))
    items += [Text(n, style="yellow") for n in notes]
    return Group(*items)


def _headline(status: dict, now: float) -> str:
    master = status.get("master") or {}
    if status.get("running"):
        return (f"ssjobs running: master pid {master.get('pid')} on {master.get('node')}, "
                f"up {age(master.get('started_at'), now)}, version {master.get('version')}")
    if not master:
        return "ssjobs is not running (never started on this data_dir)"
    when = status.get("snapshot_at")
    ago = f" from {age(when, now)} ago" if when else ""
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


def _workers(v: Any) -> str:
    return f"{v.get('static', 0)}+{v.get('dynamic', 0)}" if isinstance(v, dict) else "-"
