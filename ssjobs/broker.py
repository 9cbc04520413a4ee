"""Redis key names and the atomic operations on them (one Lua script per operation).

Every key of a topic carries the topic as a Redis Cluster hash tag, ``{prefix}:{{topic}}:ready``,
so each script touches a single slot. See docs/protocol.md for the wire format.
"""
from __future__ import annotations

import time
from functools import cache
from importlib import resources
from typing import Iterable, Sequence

import redis

from .errors import BrokerUnavailable

DEAD_CAP = 10_000            # dead-letter list length kept per topic; older entries trimmed
PROMOTE_LIMIT = 1_000        # delayed jobs promoted per call, so one call stays short
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)


@cache
def _script_source(name: str) -> str:
    return resources.files("ssjobs.lua").joinpath(f"{name}.lua").read_text("utf-8")


def _with_take(name: str) -> str:
    """A script that calls take(): take.lua's function, then the script."""
    return _script_source("take") + "\n" + _script_source(name)


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SENTINEL_PORT = 26379


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
    except ValueError as exc:
        raise BrokerUnavailable(f"invalid redis url: {exc}") from None


def _sentinel_master(url: str, options: dict) -> redis.Redis:
    from urllib.parse import unquote, urlsplit

    from redis.sentinel import Sentinel

    parts = urlsplit(url)
    hosts = []
    for host in parts.netloc.rpartition("@")[2].split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        hosts.append((name, int(port) if port else SENTINEL_PORT))
    service, _, db = parts.path.strip("/").partition("/")
    if not service:
        raise ValueError("a sentinel URL names the service: redis+sentinel://host:port/NAME")
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    tls = url.startswith("rediss")
    # The Sentinels get the same credentials and TLS as the master: a Sentinel with
    # requirepass refuses them otherwise, and its answers (which master) travel in clear.
    sentinel = Sentinel(hosts, sentinel_kwargs={"socket_timeout": 5.0,
                                                "socket_connect_timeout": 5.0,
                                                "password": password, "username": username,
                                                "ssl": tls})
    return sentinel.master_for(service, db=int(db or 0), password=password,
                               username=username, ssl=tls, **options)


def nodes_key(prefix: str) -> str:
    """ZSET node -> last master heartbeat (epoch s); fleet-wide, not tied to one topic."""
    return f"{prefix}:nodes"


class TopicKeys:
    __slots__ = ("prefix", "topic", "base", "ready", "delayed", "dead", "stats", "workers")

    def __init__(self, prefix: str, topic: str) -> None:
        self.prefix = prefix
        self.topic = topic
        self.base = f"{prefix}:{{{topic}}}"
        self.ready = f"{self.base}:ready"
        self.delayed = f"{self.base}:delayed"
        self.dead = f"{self.base}:dead"
        self.stats = f"{self.base}:stats"
        self.workers = f"{self.base}:workers"   # HASH worker name -> node

    def inflight(self, worker: str) -> str:
        return f"{self.base}:inflight:{worker}"


class Broker:
    """The operations of one topic on one Redis connection pool."""

    def __init__(self, client: redis.Redis, prefix: str, topic: str) -> None:
        self.client = client
        self.keys = TopicKeys(prefix, topic)
        self._fetch = client.register_script(_with_take("fetch"))
        self._settle = client.register_script(_with_take("settle"))
        self._recover = client.register_script(_script_source("recover"))
        self._promote = client.register_script(_script_source("promote"))
        self._requeue_dead = client.register_script(_script_source("requeue_dead"))

    # -- worker side -----------------------------------------------------------------
    def fetch(self, worker: str, count: int) -> tuple[list[bytes], float | None]:
        """Take up to ``count`` jobs. Returns (jobs, None), or ([], due time of the next
        delayed job or None) when there is nothing to take."""
        k = self.keys
        items, due = self._fetch(keys=[k.ready, k.delayed, k.inflight(worker)],
                                 args=[count, time.time(), PROMOTE_LIMIT])
        return items, (float(due) if due else None)

    def wait_one(self, worker: str, timeout: float) -> bytes | None:
        """Block up to ``timeout`` seconds for one job, moved straight into in-flight."""
        return self.client.blmove(self.keys.ready, self.keys.inflight(worker),
                                  timeout, "RIGHT", "LEFT")  # type: ignore[arg-type,return-value]

    def settle(self, worker: str, processed: int, failed: int,
               retries: Sequence[tuple[float, bytes]] = (), dead: Sequence[bytes] = (),
               unstarted: Sequence[bytes] = (), fetch_next: int = 0,
               ) -> tuple[list[bytes], float | None]:
        """Finish a batch; with ``fetch_next`` take the next one in the same round trip.
        Returns what ``fetch`` returns."""
        k = self.keys
        args: list = [processed, failed, DEAD_CAP, len(retries), len(dead), len(unstarted),
                      fetch_next, time.time(), PROMOTE_LIMIT]
        for due, env in retries:
            args += (repr(due), env)
        args += dead
        args += unstarted
        items, due = self._settle(keys=[k.ready, k.delayed, k.inflight(worker), k.dead, k.stats],
                                  args=args)
        return items, (float(due) if due else None)

    def register_worker(self, worker: str, node: str) -> None:
        self.client.hset(self.keys.workers, worker, node)

    def unregister_worker(self, worker: str) -> None:
        self.client.hdel(self.keys.workers, worker)

    # -- master side -----------------------------------------------------------------
    def recover(self, worker: str, *, charged_id: str = "", max_retries: int = 3,
                reason: str = "worker died while running this job") -> tuple[int, int]:
        k = self.keys
        requeued, dead = self._recover(
            keys=[k.ready, k.inflight(worker), k.dead, k.stats],
            args=[charged_id, max_retries, DEAD_CAP, time.time(), worker, reason])
        self.client.hdel(k.workers, worker)
        return int(requeued), int(dead)

    def promote(self, now: float | None = None) -> int:
        k = self.keys
        return int(self._promote(keys=[k.ready, k.delayed],
                                 args=[time.time() if now is None else now, PROMOTE_LIMIT]))

    def workers(self) -> dict[str, str]:
        """worker name -> node, for every worker of this topic that holds an in-flight list."""
        found = self.client.hgetall(self.keys.workers)
        return {_text(w): _text(n) for w, n in found.items()}  # type: ignore[union-attr]

    # -- producer and console side --------------------------------------------------------
    def push(self, envelopes: Iterable[bytes]) -> None:
        self.client.lpush(self.keys.ready, *envelopes)

    def backlog(self) -> int:
        return int(self.client.llen(self.keys.ready))

    def counts(self) -> dict[str, int]:
        """backlog, delayed, inflight, dead and the stats counters, in one round trip."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(k.ready)
        pipe.zcard(k.delayed)
        pipe.llen(k.dead)
        pipe.hgetall(k.stats)
        pipe.hkeys(k.workers)
        ready, delayed, dead, stats, workers = pipe.execute()
        inflight = 0
        if workers:
            pipe = self.client.pipeline(transaction=False)
            for w in workers:
                pipe.llen(k.inflight(w.decode()))
            inflight = sum(pipe.execute())
        out = {"backlog": int(ready), "delayed": int(delayed), "inflight": inflight,
               "dead": int(dead)}
        for name in ("processed", "failed", "retried"):
            out[name] = int(stats.get(name.encode(), 0))
        out["dead_total"] = int(stats.get(b"dead", 0))
        return out

    # -- dead letters, for the console (`ssjobs dead ...`) ---------------------------------
    def dead_range(self, start: int, stop: int) -> list[bytes]:
        """Dead-lettered envelopes ``start..stop`` (inclusive, LRANGE indexes; 0 = newest)."""
        return self.client.lrange(self.keys.dead, start, stop)  # type: ignore[return-value]

    def dead_requeue(self, entry: bytes, envelope: bytes) -> bool:
        """Replace the dead ``entry`` by ``envelope`` in ready, atomically; False when the
        entry was gone (retried or purged meanwhile)."""
        return bool(self._requeue_dead(keys=[self.keys.dead, self.keys.ready],
                                       args=[entry, envelope]))

    def dead_drop_oldest(self, count: int) -> int:
        """Delete the ``count`` oldest dead-lettered jobs; returns how many were deleted."""
        pipe = self.client.pipeline(transaction=True)
        pipe.llen(self.keys.dead)
        pipe.ltrim(self.keys.dead, 0, -count - 1)
        pipe.llen(self.keys.dead)
        before, _, after = pipe.execute()
        return int(before) - int(after)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
