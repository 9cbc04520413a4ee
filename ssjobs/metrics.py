"""Job-time figures from the scoreboard, and the Prometheus endpoint of the master.

:class:`JobTimes` keeps per-topic totals that survive workers exiting (a worker's histogram
lives in its slot, which a new worker zeroes when it reuses it); the histogram maths
(percentiles, sums) is in ``ssjobs.scoreboard``, next to the bucket layout.

:class:`MetricsExtension` is the master extension built when ``[metrics] listen`` is set. Its
``tick`` (master loop, once a second) only reads the scoreboard and the master's own state;
Redis counters are read by a refresher thread with its own short-timeout connections; the
HTTP server runs on its own thread and a scrape only formats cached values. So neither a slow
Redis nor a slow scraper ever holds up supervision. prometheus-client is imported only here,
when the extension starts, so ``status`` does not need it.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import forkfds
from .errors import ExtensionUnavailable
from .logs import OutageLogger
from .scoreboard import (
    HIST_BOUNDS_S,
    HIST_BUCKETS,
    KINDS,
    STATES,
    merge,
)

if TYPE_CHECKING:
    from .master import Master

log = logging.getLogger("ssjobs.metrics")

REFRESH_EVERY_S = 1.0        # Redis counters are at most this stale in a scrape
MAX_CONNECTIONS = 4          # scrapes served at once; more are closed unanswered (Prometheus
                             # scrapes one at a time: 4 leaves room for a curl or two)
READ_TIMEOUT_S = 5.0         # a client that sends nothing for this long is dropped
REQUEST_DEADLINE_S = 10.0    # and none keeps a connection longer (a byte every 4 s included)
REDIS_TIMEOUT_S = 2.0        # the refresher's socket timeout: an outage shows within seconds
SHUTDOWN_JOIN_S = 1.0        # stop() waits at most this for each thread (both are daemons)
RESTART_REASONS = ("crash", "recycle-count", "recycle-time", "recycle-memory", "timeout")
WORKER_STATES = tuple(s for s in STATES if s != "free")
# (key of Broker.counts(), metric name, help); counters are exposed with a _total suffix.
COUNTERS = (("processed", "ssjobs_jobs_processed", "Jobs that ran to completion."),
            ("failed", "ssjobs_jobs_failed", "Job runs that failed (each attempt counts)."),
            ("retried", "ssjobs_jobs_retried", "Failed runs scheduled for another attempt."),
            ("dead_total", "ssjobs_jobs_dead", "Jobs moved to the dead-letter list."))
GAUGES = (("backlog", "ssjobs_backlog", "Jobs waiting in the ready list."),
          ("delayed", "ssjobs_delayed", "Jobs scheduled for later (retries, delayed pushes)."),
          ("inflight", "ssjobs_inflight", "Jobs taken by workers, not yet settled (fleet)."),
          ("dead", "ssjobs_dead_letters", "Jobs in the dead-letter list now."),
          ("throttled", "ssjobs_throttled", "1 while the topic's rate_limit or concurrency "
           "holds jobs back."))


# -- job-time percentiles from histogram buckets ---------------------------------------------

@dataclass
class _Seen:
    started_at: float         # with the slot index, tells one worker from the next
    topic: str
    histogram: list[int]
    busy_seconds: float


@dataclass
class JobTimes:
    """Per-topic job-time totals over the life of the master, from the scoreboard.

    A worker's counts live in its slot, which the next worker to claim it zeroes. The master
    hands over the final counts of a worker that exited (:meth:`worker_exited`, read before
    the slot is released and reused). :meth:`update` reads the live slots once a second; it
    also retires a slot it finds released or reclaimed, for a master that did not hand it
    over (then at most one tick's worth of jobs is lost). Each worker's counts are retired
    exactly once: ``closed`` remembers the last retired worker of each slot."""

    retired: dict[str, tuple[list[int], float]] = field(default_factory=dict)
    seen: dict[int, _Seen] = field(default_factory=dict)
    closed: dict[int, float] = field(default_factory=dict)  # slot -> its retired started_at

    def update(self, board: Any) -> None:
        """Read every slot that was ever claimed (``board``: a Scoreboard)."""
        for index in range(board.nslots):
            slot = board.slot(index)
            info = slot.read() if slot.started_at else None   # 0: never claimed
            prev = self.seen.get(index)
            if prev is not None and (info is None or info["started_at"] != prev.started_at):
                self._retire(index, prev)
            if info is None or not info["topic"] or \
                    self.closed.get(index) == info["started_at"]:
                continue
            if info["state"] == "free":   # released: these counts are its last
                self._retire(index, _seen(info))
            else:
                self.seen[index] = _seen(info)

    def worker_exited(self, index: int, info: dict) -> None:
        """The last counts of the worker that had slot ``index`` (``Slot.read()``)."""
        if info["topic"] and self.closed.get(index) != info["started_at"]:
            self._retire(index, _seen(info))

    def _retire(self, index: int, prev: _Seen) -> None:
        if index in self.seen and self.seen[index].started_at == prev.started_at:
            del self.seen[index]
        self.closed[index] = prev.started_at
        hist, busy = self.retired.get(prev.topic, ([0] * HIST_BUCKETS, 0.0))
        self.retired[prev.topic] = (merge(list(hist), prev.histogram), busy + prev.busy_seconds)

    def totals(self) -> dict[str, tuple[list[int], float]]:
        """topic -> (histogram, seconds spent in jobs), retired workers included."""
        out = {t: (list(h), s) for t, (h, s) in self.retired.items()}
        for seen in self.seen.values():
            hist, busy = out.get(seen.topic, ([0] * HIST_BUCKETS, 0.0))
            out[seen.topic] = (merge(hist, seen.histogram), busy + seen.busy_seconds)
        return out


def _seen(info: dict) -> _Seen:
    return _Seen(info["started_at"], info["topic"], info["histogram"], info["busy_seconds"])


# -- the master extension --------------------------------------------------------------------

@dataclass(frozen=True)
class MasterView:
    """What a scrape needs from the master, copied by ``tick`` (the scrape thread never
    touches the live master objects)."""

    topics: tuple[str, ...]
    started_at: float
    workers: dict[tuple[str, str, str], int]           # (topic, kind, state) -> count
    restarts: dict[str, int]
    job_times: dict[str, tuple[list[int], float]]


class MetricsExtension:
    """Serves ``/metrics`` (Prometheus text format) for one master; see the module doc."""

    # Job times kept across a reload (which stops this extension and starts a new one),
    # keyed by master: (pid, started_at).
    _carried: dict[tuple[int, float], JobTimes] = {}

    def __init__(self, master: Master) -> None:
        assert master.cfg.metrics is not None  # built only for a config with [metrics]
        self.host, self.port = master.cfg.metrics.address
        self.token = master.cfg.metrics.token
        self._key = (os.getpid(), master.started_at)
        self.job_times = self._carried.pop(self._key, JobTimes())
        self.view: MasterView | None = None
        self.redis_view: dict[str, dict[str, int]] = {}    # topic -> Broker.counts()
        self.redis_up: dict[str, int] = {}
        self.outage = OutageLogger(log)
        self.server: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._brokers = _topic_brokers(master.cfg)

    def start(self, master: Master) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app

        self.tick(master, time.time())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        try:
            self.server = _make_server(self.host, self.port,
                                       bearer_guard(make_wsgi_app(registry), self.token))
        except OSError as exc:
            self.stop(master)
            raise ExtensionUnavailable(f"cannot listen on {self.host}:{self.port}: "
                                       f"{exc.strerror or exc}") from None
        self._spawn(self.server.serve_forever, "ssjobs-metrics-http")
        self._spawn(self._refresh_loop, "ssjobs-metrics-redis")
        log.info("metrics served at http://%s:%d/metrics", self.host, self.port)

    def tick(self, master: Master, now: float) -> None:
        """Once a second in the master loop: memory reads only."""
        board = master.board
        workers = {(t, k, s): 0 for t in master.topics for k in KINDS for s in WORKER_STATES}
        if board is not None:
            self.job_times.update(board)
            for proc in list(master.workers.values()):
                state = STATES[board.slot(proc.slot).state]
                key = (proc.topic, KINDS[proc.kind & 1], state)
                workers[key] = workers.get(key, 0) + 1
        self.view = MasterView(tuple(master.topics), master.started_at, workers,
                               dict(master.restarts), self.job_times.totals())

    def fds(self) -> list[int]:
        """The listening socket and the refresher's Redis connections (master-only)."""
        clients = {id(b.client): b.client for _, b in self._brokers.values()}
        return forkfds.socket_fds(getattr(self.server, "socket", None)) + \
            forkfds.redis_fds(clients.values())

    def worker_exited(self, master: Master, slot: int, info: dict) -> None:
        self.job_times.worker_exited(slot, info)

    def reloaded(self, master: Master, refused: dict[str, str]) -> None:
        pass

    def stop(self, master: Master) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        for thread in self._threads:
            thread.join(SHUTDOWN_JOIN_S)
        self._threads = []
        self._carried[self._key] = self.job_times
        for _, broker in self._brokers.values():
            broker.client.close()

    # -- the refresher thread ----------------------------------------------------------------
    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self.refresh_redis()
            self._stop.wait(REFRESH_EVERY_S)

    def refresh_redis(self) -> None:
        """Read every topic's counters; a topic whose Redis fails keeps its last values."""
        counts, up, failed = dict(self.redis_view), {}, set()
        for topic, (where, broker) in self._brokers.items():
            up[topic] = 0
            if where in failed:
                continue        # one failing Redis is asked once per refresh, not per topic
            try:
                counts[topic] = broker.counts()
            except Exception as exc:  # noqa: BLE001 - any Redis failure: mark it, go on
                failed.add(where)
                self.outage.note_failure(where, exc)
                continue
            up[topic] = 1
            self.outage.note_success(where)
        self.redis_view, self.redis_up = counts, up


def _topic_brokers(cfg: Any) -> dict[str, tuple[str, Any]]:
    """topic -> (name of its Redis for the log, Broker), on connections of our own (short
    timeouts)."""
    from .broker import Brokers
    from .redact import redact_url

    pool = Brokers(socket_timeout=REDIS_TIMEOUT_S)
    return {job.topic: (f"metrics: redis {redact_url(cfg.redis_for(job).url)}",
                        pool.broker(cfg.redis_for(job), job.topic)) for job in cfg.jobs}


class _Collector:
    """Builds every metric family at scrape time from the extension's cached views."""

    def __init__(self, ext: MetricsExtension) -> None:
        self.ext = ext

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ext, view = self.ext, self.ext.view
        if view is None:
            return
        redis_view, redis_up = ext.redis_view, ext.redis_up
        for family, table in ((CounterMetricFamily, COUNTERS), (GaugeMetricFamily, GAUGES)):
            for key, name, doc in table:
                fam = family(name, doc, labels=["topic"])
                for topic in view.topics:
                    if topic in redis_view:
                        fam.add_metric([topic], redis_view[topic][key])
                yield fam
        up = GaugeMetricFamily("ssjobs_redis_up", "1 if the last read of the topic's Redis "
                               "counters succeeded.", labels=["topic"])
        for topic in view.topics:
            up.add_metric([topic], redis_up.get(topic, 0))
        yield up
        workers = GaugeMetricFamily("ssjobs_workers", "Workers of this host by kind and state.",
                                    labels=["topic", "kind", "state"])
        for (topic, kind, state), n in sorted(view.workers.items()):
            workers.add_metric([topic, kind, state], n)
        yield workers
        yield self._job_duration(view)
        uptime = GaugeMetricFamily("ssjobs_master_uptime_seconds", "Seconds since the master "
                                   "started.")
        uptime.add_metric([], max(0.0, time.time() - view.started_at))
        yield uptime
        restarts = CounterMetricFamily("ssjobs_worker_restarts", "Worker exits by reason "
                                       "(each is followed by a restart unless stopping).",
                                       labels=["reason"])
        for reason in sorted({*RESTART_REASONS, *view.restarts}):
            restarts.add_metric([reason], view.restarts.get(reason, 0))
        yield restarts

    @staticmethod
    def _job_duration(view: MasterView) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        fam = HistogramMetricFamily(
            "ssjobs_job_duration_seconds", "Time jobs spent in the consumer, from the "
            "workers' scoreboard histograms (this host).", labels=["topic"])
        for topic in view.topics:
            hist, busy = view.job_times.get(topic, ([0] * HIST_BUCKETS, 0.0))
            buckets, total = [], 0
            for bound, count in zip(HIST_BOUNDS_S, hist, strict=True):
                total += count
                buckets.append(("+Inf" if bound == float("inf") else f"{bound:.6g}", total))
            fam.add_metric([topic], buckets, sum_value=busy)
        return fam


def bearer_guard(app: Any, token: str) -> Any:
    """``app`` behind ``Authorization: Bearer <token>`` (``[metrics] token``); as is
    without a token. The comparison takes the same time wherever the tokens differ."""
    if not token:
        return app
    import hmac

    expected = f"Bearer {token}".encode()

    def guarded(environ: dict, start_response: Any) -> Any:
        given = str(environ.get("HTTP_AUTHORIZATION", "")).encode("latin-1", "replace")
        if hmac.compare_digest(given, expected):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                            ("WWW-Authenticate", 'Bearer realm="ssjobs"')])
        return [b"a bearer token is required (metrics.token)\n"]

    return guarded


def _make_server(host: str, port: int, app: Any) -> Any:
    """A WSGI server bound to host:port (IPv6 when the host has a colon) that serves at
    most MAX_CONNECTIONS clients at once, each on its own daemon thread, and gives none of
    them more than READ_TIMEOUT_S of silence or REQUEST_DEADLINE_S in all: a flood of
    idle or slow connections costs a few threads, never one per connection."""
    from wsgiref.simple_server import make_server

    server_class = type("MetricsServer", (_bounded_server(),), {
        "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET,
        "bind_host": host})
    return make_server(host, port, app, server_class=server_class,
                       handler_class=_quiet_handler())


@functools.cache
def _bounded_server() -> type:
    from wsgiref.simple_server import WSGIServer

    class BoundedServer(WSGIServer):
        allow_reuse_address = True
        bind_host = ""

        def __init__(self, *args: Any, **kw: Any) -> None:
            self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
            self.active: dict[Any, float] = {}  # connection -> monotonic time accepted
            super().__init__(*args, **kw)  # binds: a failed bind calls server_close

        def server_bind(self) -> None:
            # WSGIServer's own looks up the host's FQDN: a DNS call we do not need.
            import socketserver

            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = self.bind_host, self.server_address[1]
            self.setup_environ()

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self.slots.acquire(blocking=False):
                self.shutdown_request(request)  # every slot taken: close it unanswered
                return
            self.active[request] = time.monotonic()
            threading.Thread(target=self._serve_one, args=(request, client_address),
                             name="ssjobs-metrics-client", daemon=True).start()

        def _serve_one(self, request: Any, client_address: Any) -> None:
            try:
                self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 - a broken client must not end the server
                self.handle_error(request, client_address)
            finally:
                self.active.pop(request, None)
                self.shutdown_request(request)
                self.slots.release()

        def service_actions(self) -> None:
            """Every poll of serve_forever: cut connections past REQUEST_DEADLINE_S."""
            now = time.monotonic()
            for request, since in list(self.active.items()):
                if now - since > REQUEST_DEADLINE_S:
                    _hang_up(request)

        def server_close(self) -> None:
            super().server_close()
            for request in list(self.active):
                _hang_up(request)

        def handle_error(self, request: Any, client_address: Any) -> None:
            log.debug("metrics: a client from %s failed", client_address, exc_info=True)

    return BoundedServer


@functools.cache
def _quiet_handler() -> type:
    from wsgiref.simple_server import WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):
        timeout = READ_TIMEOUT_S  # StreamRequestHandler sets it on the connection

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
            pass

    return QuietHandler


def _hang_up(request: Any) -> None:
    """End a connection a client thread is blocked on: its read returns at once."""
    try:
        request.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
