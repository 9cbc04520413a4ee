"""``ssjobs top``: a live full-screen view of the topics and this host's workers.

Every second a :class:`Sampler` reads the topic counters from Redis and the workers from the
shared-memory scoreboard (never through the master, so it works while the master is busy),
and :func:`render` lays the frame out as plain lines sized to the terminal (80×24 fits three
topics and a dozen workers). On a terminal it runs in rich's full-screen ``Live`` with the
keyboard in cbreak mode (``q`` or Ctrl-C quits, and the terminal is restored); without one it
prints a single plain-text frame and exits.

Per topic: backlog, delayed, in flight, dead, jobs/s over the last second with a 60-second
sparkline, p50/p95 job time interpolated in the workers' scoreboard histograms, and the
workers static+dynamic, busy and idle. Per worker: pid, state, current job and its age, jobs
done, RSS.
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from ..broker import Broker, Brokers
from ..config import Config
from ..periodic import Schedule
from ..redact import redact, redact_url
from ..runtime import RuntimeFiles, StopSignals
from ..scoreboard import percentiles_ms, read_board, topic_histograms
from ..text import age, milliseconds, size, when
from . import common

REFRESH_S = 1.0          # one frame a second: fresh, and ~2 Redis round trips a second
HISTORY_S = 60           # the sparkline covers the last minute, one sample per frame
REDIS_TIMEOUT_S = 2.0    # a frame waits at most this for one Redis
PLAIN_WIDTH = 100        # columns of the frame printed when stdout is not a terminal
QUIT_KEYS = b"qQ"
SPARKS = "▁▂▃▄▅▆▇█"

Line = list[tuple[str, str]]   # (text, rich style) segments of one screen line


@dataclass
class TopicRow:
    topic: str
    counts: dict[str, int] | None          # Broker.counts(), None when Redis failed
    rate: float | None = None              # jobs/s since the previous frame
    history: list[float] = field(default_factory=list)   # jobs/s per frame, oldest first
    p50_ms: float | None = None
    p95_ms: float | None = None
    workers: dict[str, int] = field(default_factory=dict)   # static, dynamic, busy, idle


@dataclass
class Frame:
    at: float
    master: dict | None                    # pid, started_at; None when not running
    topics: list[TopicRow]
    workers: list[dict]                    # scoreboard slots of this host's workers
    errors: list[str]
    notes: list[str] = field(default_factory=list)   # periodic schedules' next runs


class Sampler:
    """Reads one frame's data; keeps the per-topic processed counters to make rates."""

    def __init__(self, cfg: Config) -> None:
        self.files = RuntimeFiles(cfg.process.data_dir)
        pool = Brokers(socket_timeout=REDIS_TIMEOUT_S)
        self.brokers: dict[str, tuple[str, Broker]] = {
            job.topic: (cfg.redis_for(job).url, pool.broker(cfg.redis_for(job), job.topic))
            for job in cfg.jobs}
        self.last: dict[str, tuple[float, int]] = {}      # topic -> (time, processed)
        self.history: dict[str, deque[float]] = {t: deque(maxlen=HISTORY_S)
                                                 for t in self.brokers}
        self.schedules = [Schedule(p) for p in cfg.periodic]

    def sample(self) -> Frame:
        now = time.time()
        workers, master = self._scoreboard()
        hists = topic_histograms(workers)
        rows, errors, failed = [], [], {}
        for topic, (url, broker) in self.brokers.items():
            counts = None
            if url not in failed:
                try:
                    counts = broker.counts()
                except Exception as exc:  # noqa: BLE001 - any Redis failure: show, go on
                    failed[url] = redact(f"redis {redact_url(url)}: {exc}")
                    errors.append(failed[url])
            pct = percentiles_ms(hists.get(topic))
            row = TopicRow(topic, counts, p50_ms=pct["p50_ms"], p95_ms=pct["p95_ms"])
            self._rate(row, now)
            row.workers = _worker_counts(w for w in workers if w["topic"] == topic)
            rows.append(row)
        workers.sort(key=lambda w: (w["topic"], w["kind"] != "static", w["index"]))
        notes = [f"periodic {s.cfg.topic} ({s.cfg.schedule}): next {when(s.next_after(now))}"
                 for s in self.schedules]
        return Frame(now, master, rows, workers, errors, notes)

    def _rate(self, row: TopicRow, now: float) -> None:
        if row.counts is None:
            return
        processed = row.counts["processed"]
        prev = self.last.get(row.topic)
        self.last[row.topic] = (now, processed)
        if prev is not None and now > prev[0] and processed >= prev[1]:
            row.rate = (processed - prev[1]) / (now - prev[0])
            self.history[row.topic].append(row.rate)
        row.history = list(self.history[row.topic])

    def _scoreboard(self) -> tuple[list[dict], dict | None]:
        pid = self.files.running_pid()
        found = read_board(self.files.scoreboard_path)
        if found is None:
            return [], ({"pid": pid, "started_at": None} if pid else None)
        workers, header = found
        if not pid:
            return [], None
        started = header["started_at"] if header["master_pid"] == pid else None
        return workers, {"pid": pid, "started_at": started}


def _worker_counts(workers: Iterator[dict]) -> dict[str, int]:
    out = dict.fromkeys(("static", "dynamic", "busy", "idle"), 0)
    for w in workers:
        out[w["kind"]] = out.get(w["kind"], 0) + 1
        if w["state"] in ("busy", "idle"):
            out[w["state"]] += 1
    return out


# -- layout (pure) ---------------------------------------------------------------------------

TOPIC_COLS = (("BACKLOG", 8), ("DELAYED", 8), ("INFLIGHT", 9), ("DEAD", 7), ("JOBS/S", 8),
              ("P50", 8), ("P95", 8))
WORKER_COLS = (("KIND", 8), ("STATE", 9), ("JOB", 14), ("AGE", 7), ("DONE", 8), ("RSS", 8))
PID_WIDTH = 8


def render(frame: Frame, width: int, height: int | None) -> list[Line]:
    """The frame as screen lines, at most ``height`` of them (None: as many as needed)."""
    width = max(width, 60)
    head: list[Line] = [_headline(frame, width), []]
    topic_head = _topic_header(width)
    topics = [_topic_lines(row, width) for row in frame.topics]
    worker_head = _worker_header(width)
    workers = [_worker_line(w, frame.at, width) for w in frame.workers]
    foot: list[Line] = [[(_fit(n, width), "dim")] for n in frame.notes]
    foot += [[(_fit(e, width), "yellow")] for e in frame.errors]
    foot.append([(_fit("q quit · workers: static+dynamic · p50/p95: job time of live "
                       "workers", width), "dim")])
    if height is not None:
        room = height - len(head) - len(foot) - 3   # topic header, blank, worker header
        most = max(1, (room - min(len(workers) or 1, 3)) // 2)
        if len(topics) > most:
            keep = max(1, most - 1)
            topics = topics[:keep] + [[_more(len(topics) - keep, "topics")]]
        left = max(1, room - sum(len(t) for t in topics))
        if len(workers) > left:
            workers = workers[:left - 1] + [_more(len(workers) - left + 1, "workers")]
    lines = head + [topic_head] + [line for t in topics for line in t]
    lines += [[], worker_head] + (workers or [[("no workers on this host", "dim")]])
    return lines + foot


def _more(n: int, what: str) -> Line:
    return [(f"… {n} more {what}", "dim")]


def _headline(frame: Frame, width: int) -> Line:
    clock = time.strftime("%H:%M:%S", time.localtime(frame.at))
    if frame.master is None:
        left, style = "ssjobs top · master not running", "bold red"
    else:
        up = age(frame.master.get("started_at"), frame.at)
        left, style = f"ssjobs top · master {frame.master['pid']} up {up}", "bold green"
    return [(left, style), (clock.rjust(max(1, width - len(left))), "")]


def _topic_header(width: int) -> Line:
    name_w = width - sum(w for _, w in TOPIC_COLS)
    return [("TOPIC".ljust(name_w) + "".join(n.rjust(w) for n, w in TOPIC_COLS), "bold")]


def _topic_lines(row: TopicRow, width: int) -> list[Line]:
    name_w = width - sum(w for _, w in TOPIC_COLS)
    c = row.counts or {}
    cells = [_count(c.get("backlog")), _count(c.get("delayed")), _count(c.get("inflight")),
             _count(c.get("dead")), "-" if row.rate is None else f"{row.rate:.1f}",
             milliseconds(row.p50_ms), milliseconds(row.p95_ms)]
    first = [(_fit(row.topic, name_w - 1).ljust(name_w), "cyan")]
    for (name, w), cell in zip(TOPIC_COLS, cells, strict=True):
        style = "red" if name == "DEAD" and c.get("dead") else ""
        first.append((cell.rjust(w), style))
    wk = row.workers
    label = (f"  workers {wk.get('static', 0)}+{wk.get('dynamic', 0)}, {wk.get('busy', 0)} busy"
             f" {wk.get('idle', 0)} idle" + (", throttled" if c.get("throttled") else "")
             ).ljust(36)
    peak = max(row.history, default=0.0)
    tail = f" max {peak:.1f}/s"
    spark = sparkline(row.history, max(8, width - len(label) - len(tail)))
    return [first, [(label, "dim"), (spark, "green"), (tail, "dim")]]


def sparkline(values: list[float], width: int, span: int = HISTORY_S) -> str:
    """``span`` samples (the newest last; missing ones blank) squeezed into ``width`` cells,
    each showing the highest sample it covers, scaled to the highest overall."""
    padded = [None] * (span - len(values)) + list(values[-span:])
    cells = min(width, span)
    peak = max((v for v in padded if v), default=0.0)
    out = []
    for i in range(cells):
        chunk = [v for v in padded[i * span // cells:(i + 1) * span // cells] if v is not None]
        if not chunk:
            out.append(" ")
        elif peak <= 0:
            out.append(SPARKS[0])
        else:
            out.append(SPARKS[min(len(SPARKS) - 1, int(max(chunk) / peak * (len(SPARKS) - 1)
                                                        + 0.5))])
    return "".join(out).rjust(width)


def _worker_header(width: int) -> Line:
    topic_w = width - PID_WIDTH - sum(w for _, w in WORKER_COLS)
    return [("PID".ljust(PID_WIDTH) + "TOPIC".ljust(topic_w)
             + "".join(n.ljust(w) if n in ("KIND", "STATE", "JOB") else n.rjust(w)
                       for n, w in WORKER_COLS), "bold")]


def _worker_line(w: dict, now: float, width: int) -> Line:
    topic_w = width - PID_WIDTH - sum(wd for _, wd in WORKER_COLS)
    job = w.get("job_id") or "-"
    if len(job) > 13:
        job = job[:6] + "…" + job[-6:]
    state = w["state"]
    style = {"busy": "bold yellow", "idle": "green", "starting": "cyan"}.get(state, "dim")
    kind_w, state_w, job_w, age_w, done_w, rss_w = (wd for _, wd in WORKER_COLS)
    return [(str(w["pid"]).ljust(PID_WIDTH), ""),
            (_fit(w["topic"], topic_w - 1).ljust(topic_w), "cyan"),
            (w["kind"].ljust(kind_w), ""), (state.ljust(state_w), style),
            (job.ljust(job_w), ""), (age(w.get("job_started_at"), now).rjust(age_w), ""),
            (_count(w.get("processed")).rjust(done_w), ""),
            (size(w.get("rss_bytes")).rjust(rss_w), "")]


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def _count(v: int | None) -> str:
    if v is None:
        return "-"
    if v < 100_000:
        return str(v)
    if v < 10**6:
        return f"{v / 1000:.0f}k"
    return f"{v / 10**6:.1f}M" if v < 10**9 else f"{v / 10**9:.1f}G"


def plain(lines: list[Line]) -> str:
    return "\n".join("".join(text for text, _ in line).rstrip() for line in lines)


# -- running ---------------------------------------------------------------------------------

def run(cfg_path: str | os.PathLike, *, interval: float = REFRESH_S) -> int:
    """The live view on a terminal; else one plain frame (measured over ``interval``: a
    rate needs two samples). Exit status 0."""
    sampler = Sampler(common.load(cfg_path))
    if not sys.stdout.isatty():
        print(plain(render(one_frame(sampler, interval), PLAIN_WIDTH, None)))
        return 0
    try:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text
    except ImportError:
        print(plain(render(one_frame(sampler, interval), PLAIN_WIDTH, None)))
        print("(install rich for the live view: pip install 'ssjobs[server]')", file=sys.stderr)
        return 0
    console = Console(highlight=False)
    keys_fd = sys.stdin.fileno() if sys.stdin.isatty() else None

    def screen() -> Any:
        screen_size = console.size
        lines = render(sampler.sample(), screen_size.width, screen_size.height)
        return Text("\n").join(Text.assemble(*line, no_wrap=True, overflow="crop")
                               for line in lines)

    with StopSignals() as stop, cbreak(keys_fd) if keys_fd is not None else nullcontext(), \
            Live(screen(), console=console, screen=True, auto_refresh=False) as live:
        while not stop.received:
            if any(k in stop.wait(interval, keys_fd) for k in QUIT_KEYS):
                break
            if not stop.received:
                live.update(screen(), refresh=True)
    return 0


def one_frame(sampler: Sampler, interval: float) -> Frame:
    """A frame whose jobs/s are measured: two samples ``interval`` apart (one sample has
    no rate, and its sparkline would say "max 0.0/s" of a busy topic)."""
    sampler.sample()
    with StopSignals() as stop:
        stop.wait(interval)
    return sampler.sample()


@contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Keys arrive one by one, unechoed, with Ctrl-C still a signal; restored on exit."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
