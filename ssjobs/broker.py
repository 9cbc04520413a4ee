"""Redis key names and the atomic operations on them (one Lua script per operation).

Every key of a topic carries the topic as a Redis Cluster hash tag, ``{prefix}:{{topic}}:ready``,
so each script touches a single slot. See docs/protocol.md for the wire format.
"""
from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import resources
from typing import Any, Callable, NamedTuple, Sequence, TypeVar

import redis

from .errors import BrokerError, BrokerUnavailable, Fenced
from .scoreboard import BatchPosition
from .urls import CLUSTER_SCHEMES, SENTINEL_SCHEMES, parse_sentinel

F = TypeVar("F", bound=Callable[..., Any])

DEAD_CAP = 10_000            # dead-letter list length kept per topic; older entries trimmed
PROMOTE_LIMIT = 1_000        # delayed jobs promoted per call, so one call stays short
THROTTLED_FOR_S = 5.0        # a topic is shown throttled this long after its limit held jobs back
# What redis-py raises when the server cannot be reached (it wraps socket errors in these).
_DOWN = (redis.ConnectionError, redis.TimeoutError)
# Replies of a Redis that is there but cannot serve right now (loading, failing over, out of
# memory, a replica after failover): waited out like an outage, not a bug.
_TRANSIENT_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "OOM",
                      "READONLY")


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, (*_DOWN, redis.ReadOnlyError)):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


@contextmanager
def translate() -> Iterator[None]:
    """The broker boundary: a Redis that cannot serve now (down, loading, failing over, out
    of memory) becomes :class:`BrokerUnavailable`, which every caller waits out; any other
    error reply becomes :class:`BrokerError`. Used around every command, here and where a
    module talks to a client directly, so no redis-py type reaches the rest of ssjobs."""
    try:
        yield
    except redis.RedisError as exc:
        if _unavailable(exc):
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        raise BrokerError(f"{type(exc).__name__}: {exc}") from exc


def _io(method: F) -> F:
    """A Broker method whose Redis errors are translated (see :func:`translate`)."""
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with translate():
            return method(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


@cache
def script_source(name: str) -> str:
    """The text of ``ssjobs/lua/NAME.lua`` (package data: wheel, editable and binary alike)."""
    return resources.files("ssjobs.lua").joinpath(f"{name}.lua").read_text("utf-8")


_DEFINES = re.compile(r"^local (?:function )?([A-Za-z_]\w*)", re.M)
_COMMENT = re.compile(r"--[^\n]*")
_NAME = re.compile(r"[A-Za-z_]\w*")


@cache
def with_lib(name: str) -> str:
    """A script with the parts of lib.lua it uses in front of it: the definitions it names,
    and those these name, in lib's order. Redis runs a script's whole text on every call,
    so each unused function would cost a closure per call."""
    blocks = _definitions(script_source("lib"))
    defines = [set(_DEFINES.findall(block)) for block in blocks]
    named = set(_NAME.findall(_COMMENT.sub("", script_source(name))))
    kept: set[int] = set()
    while more := {i for i, names in enumerate(defines) if i not in kept and names & named}:
        kept |= more        # to a fixed point: a kept block may name another
        for i in more:
            named |= set(_NAME.findall(_COMMENT.sub("", blocks[i])))
    return "\n\n".join([*(blocks[i] for i in sorted(kept)), script_source(name)])


def _definitions(lib: str) -> list[str]:
    """lib.lua cut into its top-level definitions, each with the comment lines right above."""
    lines = lib.splitlines()
    starts = []
    for i, line in enumerate(lines):
        if _DEFINES.match(line):
            while i > 0 and lines[i - 1].startswith("--"):
                i -= 1
            starts.append(i)
    bounds = [*starts, len(lines)]
    return ["\n".join(lines[a:b]).strip() for a, b in zip(bounds, bounds[1:], strict=False)]




def connect(url: str, *, socket_timeout: float | None = 10.0,
            connect_timeout: float = 5.0) -> redis.Redis:
    """A client with bytes replies; ``socket_timeout`` must exceed any blocking wait.

    ``redis+cluster://host:port`` (or ``rediss+cluster://``) names any node of a Redis
    Cluster: every key of a topic shares one hash slot, so each operation stays on one node.
    ``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]`` asks those
    Sentinels for the current master of ``service`` (and again after a failover).
    """
    options = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
    try:
        if url.startswith(SENTINEL_SCHEMES):
            return _sentinel_master(url, options)
        if url.startswith(CLUSTER_SCHEMES):
            from redis.cluster import RedisCluster

            plain = url.replace("+cluster", "", 1)
            return RedisCluster.from_url(plain, **options)  # type: ignore[return-value]
        return redis.Redis.from_url(url, health_check_interval=0, **options)
    except redis.RedisError as exc:  # a Sentinel that cannot be asked which master
        raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except ValueError as exc:
        raise BrokerUnavailable(f"invalid redis url: {exc}") from None


def _sentinel_master(url: str, options: dict) -> redis.Redis:
    from redis.sentinel import Sentinel

    sentinel_url = parse_sentinel(url)
    auth = {"password": sentinel_url.password, "username": sentinel_url.username,
            "ssl": sentinel_url.tls}
    # The Sentinels get the same credentials and TLS as the master: a Sentinel with
    # requirepass refuses them otherwise, and its answers (which master) travel in clear.
    sentinel = Sentinel(sentinel_url.hosts, sentinel_kwargs={"socket_timeout": 5.0,
                                                             "socket_connect_timeout": 5.0,
                                                             **auth})
    return sentinel.master_for(sentinel_url.service, db=sentinel_url.db, **auth, **options)


def claim(client: redis.Redis, key: str, owner: str, ttl_ms: int) -> bool:
    """Claim ``key`` fleet-wide for ``ttl_ms`` (SET NX PX): True for the one caller that got
    it (one alert per condition across every master)."""
    with translate():
        return bool(client.set(key, owner, nx=True, px=ttl_ms))


def nodes_key(prefix: str) -> str:
    """SET of the nodes (master incarnations) known to the fleet; fleet-wide."""
    return f"{prefix}:nodes"


def node_key(prefix: str, node: str) -> str:
    """STRING a master refreshes every second with a time-to-live of heartbeat_ttl: while it
    exists, the node is alive (judged on Redis' clock). Its value is the master's summary."""
    return f"{prefix}:node:{node}"


def node_of(worker: str) -> str:
    """The node (master incarnation) a worker name belongs to: ``node/pid-serial``."""
    return worker.partition("/")[0]


class TopicKeys:
    __slots__ = ("prefix", "topic", "base", "ready", "delayed", "dead", "stats", "workers",
                 "starts", "running", "conf", "cancels", "jobs", "progress", "cancelling", "taken")

    def __init__(self, prefix: str, topic: str) -> None:
        self.prefix = prefix
        self.topic = topic
        self.base = f"{prefix}:{{{topic}}}"
        self.ready = f"{self.base}:ready"
        self.delayed = f"{self.base}:delayed"
        self.dead = f"{self.base}:dead"
        self.stats = f"{self.base}:stats"
        self.workers = f"{self.base}:workers"   # HASH worker name -> batch it holds
        self.starts = f"{self.base}:starts"     # ZSET recent starts (rate_limit)
        self.running = f"{self.base}:running"   # STRING jobs held by workers (concurrency)
        self.conf = f"{self.base}:conf"         # HASH what the masters publish (track ...)
        self.cancels = f"{self.base}:cancels"   # STRING cancels not yet seen through
        # tracked topics (docs/protocol.md, "Job records")
        self.jobs = f"{self.base}:jobs"         # HASH job id -> record
        self.progress = f"{self.base}:progress"      # HASH job id -> progress while it runs
        self.cancelling = f"{self.base}:cancelling"  # HASH job id -> 1: cancel not seen through
        self.taken = f"{self.base}:taken"       # HASH worker name -> when it took its batch

    def inflight(self, worker: str) -> str:
        return f"{self.base}:inflight:{worker}"

    def push_marker(self, token: str) -> str:
        return f"{self.base}:push:{token}"

    def unique(self, key: str) -> str:
        return f"{self.base}:unique:{key}"

    def tick(self, schedule: str) -> str:
        return f"{self.base}:tick:{schedule}"


class Rules(NamedTuple):
    """What the take step enforces for a topic (docs/reference.md): flow control and
    tracking, from the worker's own config."""
    rate_n: int = 0            # job starts per rate_period, fleet-wide (0: no limit)
    rate_period: float = 1.0
    concurrency: int = 0       # jobs held at once, fleet-wide (0: no limit)
    track: bool = False
    result_ttl: float = 86400.0

    @property
    def limited(self) -> bool:
        return bool(self.rate_n or self.concurrency)


NO_RULES = Rules()


class Settled(NamedTuple):
    jobs: list[bytes]         # the jobs the worker now holds besides those it kept, oldest first
    next_due: float | None    # when nothing came: due time of the next delayed job
    wait: float | None = None  # when flow control held jobs back: seconds until the next try


class Outcomes(NamedTuple):
    """What a worker reports when it settles: counters and rewritten envelopes."""
    processed: int = 0
    failed: int = 0
    retries: Sequence[tuple[float, bytes]] = ()   # (due time, envelope with attempts + 1)
    dead: Sequence[bytes] = ()
    # tracked jobs (tracking.Records): the records of those that ended or wait for a retry,
    # and the expiry entry of those that ended, as settle.lua takes them (b"": none)
    records: bytes = b""
    expiry: bytes = b""
    releases: Sequence[tuple[str, str]] = ()      # (unique key, job id) no longer held


NO_OUTCOMES = Outcomes()


class Broker:
    """The operations of one topic on one Redis connection pool."""

    def __init__(self, client: redis.Redis, prefix: str, topic: str,
                 rules: Rules = NO_RULES) -> None:
        self.client = client
        self.keys = TopicKeys(prefix, topic)
        self.rules = rules
        # what settle.lua reads of the rules: one word list, '' for a topic with none
        self._rules_arg = "" if not (rules.limited or rules.track) else " ".join(
            str(v) for v in (rules.rate_n, rules.rate_period, rules.concurrency,
                             int(rules.track), int(rules.result_ttl)))
        self._settle = client.register_script(with_lib("settle"))
        self._recover = client.register_script(with_lib("recover"))
        self._promote = client.register_script(with_lib("promote"))
        self._requeue_dead = client.register_script(with_lib("requeue_dead"))
        self._tick = client.register_script(with_lib("tick"))

    # -- worker side -----------------------------------------------------------------
    @_io
    def register_worker(self, worker: str) -> None:
        """The worker's registration: it holds batch 0 (empty). Idempotent."""
        self.client.hsetnx(self.keys.workers, worker, 0)

    @_io
    def rejoin(self, worker: str, seq: int) -> None:
        """Register again after being fenced, holding batch ``seq`` (empty)."""
        self.client.hset(self.keys.workers, worker, seq)

    @_io
    def settle(self, worker: str, seq: int, *, done: int = 0, held: int = 0,
               give_back: bool = False, outcomes: Outcomes = NO_OUTCOMES,
               take: int = 0) -> Settled:
        """Settle batch ``seq``: drop its ``done`` oldest jobs (finished: ``outcomes`` says
        how), keep the next ``held`` (or put them back in front of ready with
        ``give_back``), and take up to ``take`` new jobs. A fetch is ``settle(w, seq,
        take=n)``. The worker then holds batch ``seq + 1``. Safe to repeat; Fenced when
        Redis no longer knows this worker (or this batch)."""
        k = self.keys
        args: list = [worker, seq, done, held, 1 if give_back else 0, outcomes.processed,
                      outcomes.failed, len(outcomes.retries), len(outcomes.dead), take,
                      time.time(), PROMOTE_LIMIT, DEAD_CAP, self._rules_arg,
                      outcomes.records, outcomes.expiry, len(outcomes.releases)]
        for due, env in outcomes.retries:
            args += (repr(float(due)), env)
        args += outcomes.dead
        for key, job_id in outcomes.releases:
            args += (key, job_id)
        try:
            jobs, due, wait = self._settle(
                keys=[k.ready, k.delayed, k.inflight(worker), k.dead, k.stats, k.workers],
                args=args)
        except redis.ResponseError as exc:
            if str(exc).startswith("FENCED"):
                raise Fenced(str(exc)) from None
            raise
        return Settled(jobs, float(due) if due else None, float(wait) if wait else None)

    @_io
    def wait_one(self, worker: str, timeout: float) -> bytes | None:
        """Block up to ``timeout`` seconds for one job, moved straight into in-flight. Never
        send it again after a lost reply: the next settle hands back what it moved."""
        return self.client.blmove(self.keys.ready, self.keys.inflight(worker),
                                  timeout, "RIGHT", "LEFT")  # type: ignore[arg-type,return-value]

    # -- master side -----------------------------------------------------------------
    @_io
    def recover(self, worker: str, position: BatchPosition | None = None, *,
                max_retries: int = 3, reason: str = "worker died while running this job",
                ) -> tuple[int, int, int]:
        """Requeue a gone worker's in-flight jobs and fence it. ``position`` (from its
        scoreboard slot) says which succeeded and which was running; without it everything
        goes back uncharged. Returns (requeued, dead-lettered, dropped as done)."""
        k, r = self.keys, self.rules
        seq, done, running = ("", 0, 0) if position is None else position
        requeued, dead, dropped = self._recover(
            keys=[k.ready, k.inflight(worker), k.dead, k.stats, k.workers, k.running],
            args=[worker, seq, done, int(running), max_retries, DEAD_CAP, time.time(),
                  reason, 1 if r.concurrency else 0, 1 if r.track else 0,
                  int(r.result_ttl)])
        return int(requeued), int(dead), int(dropped)

    @_io
    def promote(self, now: float | None = None) -> int:
        k = self.keys
        return int(self._promote(keys=[k.ready, k.delayed],
                                 args=[time.time() if now is None else now, PROMOTE_LIMIT]))

    @_io
    def enqueue_tick(self, schedule: str, tick: float, envelope: bytes) -> bool:
        """Enqueue a periodic job for ``tick`` unless this or a later tick of ``schedule``
        was enqueued already (by any master). True when this call enqueued it."""
        k = self.keys
        return bool(self._tick(keys=[k.ready, k.tick(schedule), k.conf],
                               args=[repr(float(tick)), envelope, time.time()]))

    @_io
    def last_tick(self, schedule: str) -> float | None:
        found = self.client.get(self.keys.tick(schedule))
        return float(found) if found else None

    @_io
    def publish_conf(self, track: bool, result_ttl: float) -> None:
        """What producers' push scripts must know of the topic: whether to record jobs."""
        if track:
            self.client.hset(self.keys.conf, mapping={"track": 1,
                                                      "result_ttl": int(result_ttl)})
        else:
            self.client.hdel(self.keys.conf, "track")

    @_io
    def workers(self) -> list[str]:
        """Every registered worker of this topic (each may hold an in-flight list)."""
        return [_text(w) for w in self.client.hkeys(self.keys.workers)]  # type: ignore[union-attr]

    # -- producer and console side --------------------------------------------------------
    @_io
    def backlog(self) -> int:
        """Jobs waiting to be taken: ready and priority jobs (those wait in delayed with
        negative scores: due before any other)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(self.keys.ready)
        pipe.zcount(self.keys.delayed, "-inf", "(0")
        return sum(int(n) for n in pipe.execute())

    @_io
    def counts(self) -> dict[str, int]:
        """backlog, delayed, inflight, dead and the stats counters, in one round trip."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(k.ready)
        pipe.zcount(k.delayed, "-inf", "(0")     # priority jobs (see backlog)
        pipe.zcount(k.delayed, 0, "+inf")
        pipe.llen(k.dead)
        pipe.hgetall(k.stats)
        pipe.hkeys(k.workers)
        ready, prio, delayed, dead, stats, workers = pipe.execute()
        inflight = 0
        if workers:
            pipe = self.client.pipeline(transaction=False)
            for w in workers:
                pipe.llen(k.inflight(w.decode()))
            inflight = sum(pipe.execute())
        out = {"backlog": int(ready) + int(prio), "delayed": int(delayed), "inflight": inflight,
               "dead": int(dead)}
        for name in ("processed", "failed", "retried"):
            out[name] = int(stats.get(name.encode(), 0))
        out["dead_total"] = int(stats.get(b"dead", 0))
        until = float(stats.get(b"throttled_until", 0) or 0)
        out["throttled"] = int(time.time() < until + THROTTLED_FOR_S)
        return out

    @staticmethod
    def dead_counts(brokers: Sequence[Broker]) -> list[tuple[int, int]]:
        """(dead letters now, dead-lettered ever) of each broker, which all share one
        client, in one round trip."""
        with translate():
            pipe = brokers[0].client.pipeline(transaction=False)
            for broker in brokers:
                pipe.llen(broker.keys.dead)
                pipe.hget(broker.keys.stats, "dead")
            replies = pipe.execute()
        return [(int(replies[2 * i]), int(replies[2 * i + 1] or 0)) for i in range(len(brokers))]

    # -- dead letters, for the console (`ssjobs dead ...`) ---------------------------------
    @_io
    def dead_range(self, start: int, stop: int) -> list[bytes]:
        """Dead-lettered envelopes ``start..stop`` (inclusive, LRANGE indexes; 0 = newest)."""
        return self.client.lrange(self.keys.dead, start, stop)  # type: ignore[return-value]

    @_io
    def dead_requeue(self, entry: bytes, envelope: bytes) -> bool:
        """Replace the dead ``entry`` by ``envelope`` in ready, atomically; False when the
        entry was gone (retried or purged meanwhile)."""
        return bool(self._requeue_dead(keys=[self.keys.dead, self.keys.ready, self.keys.conf],
                                       args=[entry, envelope, time.time()]))

    @_io
    def dead_drop_oldest(self, count: int) -> int:
        """Delete the ``count`` oldest dead-lettered jobs; returns how many were deleted."""
        pipe = self.client.pipeline(transaction=True)
        pipe.llen(self.keys.dead)
        pipe.ltrim(self.keys.dead, 0, -count - 1)
        pipe.llen(self.keys.dead)
        before, _, after = pipe.execute()
        return int(before) - int(after)


class Brokers:
    """One client per Redis URL and one Broker per topic: what every part of ssjobs that
    talks to the topics of a config keeps (the master, metrics, status, top)."""

    def __init__(self, *, socket_timeout: float = 10.0, connect_timeout: float = 5.0) -> None:
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.clients: dict[str, redis.Redis] = {}

    def client(self, url: str) -> redis.Redis:
        client = self.clients.get(url)
        if client is None:
            client = self.clients[url] = connect(url, socket_timeout=self.socket_timeout,
                                                 connect_timeout=self.connect_timeout)
        return client

    def broker(self, redis_cfg: Any, topic: str, rules: Rules = NO_RULES) -> Broker:
        """The broker of ``topic`` on ``redis_cfg`` (a RedisConfig: url and prefix)."""
        return Broker(self.client(redis_cfg.url), redis_cfg.prefix, topic, rules)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
