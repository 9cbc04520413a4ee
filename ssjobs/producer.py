"""Push jobs from application code (SPEC §3).

Imports only the broker, envelope, config and errors layers: an application that pushes
jobs pulls in no click, no process code and no worker-only dependency.
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Any, Iterable, Mapping

from redis import ConnectionPool

from . import envelope
from .broker import CONNECTION_ERRORS, TopicKeys, connect
from .errors import BrokerUnavailable

CHUNK_SIZE = 1_000   # envelopes per LPUSH: big enough to amortise the round trip,
                     # small enough to keep one command well under Redis' 512 MB limit


def check_topic(topic: Any) -> None:
    if not isinstance(topic, str) or not topic or "{" in topic or "}" in topic:
        raise ValueError(f"invalid topic {topic!r}")


def make_envelope(topic: str, payload: Any, now: float, max_payload_bytes: int,
                  ) -> tuple[str, bytes]:
    """(job id, envelope); TypeError/ValueError before anything reaches Redis."""
    body = envelope.encode_payload(payload)
    if len(body) > max_payload_bytes:
        raise ValueError(f"payload is {len(body)} bytes encoded, over max_payload_bytes="
                         f"{max_payload_bytes}")
    job_id = envelope.new_id(now)
    return job_id, envelope.build(job_id, topic, body, 0, now, None)


def push_command(keys: TopicKeys, env: bytes, now: float, delay: float) -> tuple:
    """The one Redis command that enqueues ``env``: LPUSH on ready, or ZADD on delayed."""
    if delay and delay > 0:
        return ("ZADD", keys.delayed, now + delay, env)
    return ("LPUSH", keys.ready, env)


def queue_pushes(pipe: Any, keys: TopicKeys, envs: list[bytes], now: float,
                 delay: float) -> None:
    """Add the chunked commands enqueueing ``envs`` to a pipeline (sync or asyncio)."""
    for start in range(0, len(envs), CHUNK_SIZE):
        chunk = envs[start:start + CHUNK_SIZE]
        if delay and delay > 0:
            pipe.zadd(keys.delayed, dict.fromkeys(chunk, now + delay))
        else:
            pipe.lpush(keys.ready, *chunk)


class _Server:
    """One Redis server: a pool for pipelines and reads, plus one connection per thread for
    single pushes."""

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        self.client = connect(url)
        # Own connections only for a plain pool: a Sentinel- or Cluster-managed connection
        # made outside its pool would not know which server to talk to.
        self.direct = type(getattr(self.client, "connection_pool", None)) is ConnectionPool
        self.local = threading.local()
        self.own: weakref.WeakSet = weakref.WeakSet()

    def command(self, *args: Any) -> Any:
        """One command on this thread's own connection (made once and kept), skipping
        redis-py's per-call pool and instrumentation work, which costs about a third of a
        single push. One reconnect on a dropped link."""
        if not self.direct:  # a cluster or sentinel client must route each command itself
            try:
                return self.client.execute_command(*args)
            except CONNECTION_ERRORS as exc:
                raise BrokerUnavailable(f"cannot push to redis: {exc}") from exc
        local = self.local
        for attempt in (1, 2):
            conn = local.__dict__.get("conn")
            if conn is None or local.pid != os.getpid():
                # Not from the pool: the pool would keep a thread's connection alive after
                # the thread is gone; this one is closed when the thread-local is dropped.
                pool = self.client.connection_pool
                conn = local.conn = pool.connection_class(**pool.connection_kwargs)
                local.pid = os.getpid()
                self.own.add(conn)
            try:
                conn.send_command(*args)
                return conn.read_response()
            except CONNECTION_ERRORS as exc:
                conn.disconnect()
                if attempt == 2:
                    raise BrokerUnavailable(f"cannot push to redis: {exc}") from exc

    def close(self) -> None:
        for conn in list(self.own):
            conn.disconnect()
        self.client.close()
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()


class Producer:
    """Thread-safe. ``routes`` maps topics that live on another Redis to (url, prefix)."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "ssjobs",
                 max_payload_bytes: int = envelope.DEFAULT_MAX_PAYLOAD_BYTES,
                 routes: Mapping[str, tuple[str, str]] | None = None) -> None:
        self.prefix = prefix
        self.max_payload_bytes = max_payload_bytes
        self._default = _Server(url, prefix)
        servers = {(url, prefix): self._default}
        self._routes: dict[str, _Server] = {}
        for topic, where in (routes or {}).items():
            if where not in servers:
                servers[where] = _Server(*where)
            self._routes[topic] = servers[where]
        self._servers = list(servers.values())
        self._topics: dict[str, tuple[TopicKeys, _Server]] = {}

    @classmethod
    def from_config(cls, path: str | os.PathLike, **options: Any) -> Producer:
        """A producer for the config's Redis, routing topics with their own [jobs.redis]."""
        from .config import load_config  # only when asked: keeps `import producer` light

        cfg = load_config(path)
        routes = {job.topic: (job.redis.url, job.redis.prefix) for job in cfg.jobs
                  if job.redis is not None and job.redis != cfg.redis}
        return cls(cfg.redis.url, prefix=cfg.redis.prefix, routes=routes, **options)

    def _topic(self, topic: str) -> tuple[TopicKeys, _Server]:
        found = self._topics.get(topic)
        if found is None:
            check_topic(topic)
            server = self._routes.get(topic, self._default)
            found = self._topics[topic] = (TopicKeys(server.prefix, topic), server)
        return found

    def push(self, topic: str, payload: Any = None, *, delay: float = 0) -> str:
        """Enqueue one job; returns its id. ``delay`` seconds: run no earlier than that."""
        keys, server = self._topic(topic)
        now = time.time()
        job_id, env = make_envelope(topic, payload, now, self.max_payload_bytes)
        server.command(*push_command(keys, env, now, delay))
        return job_id

    def push_many(self, topic: str, payloads: Iterable[Any], *, delay: float = 0) -> list[str]:
        """Enqueue many jobs, pipelined in chunks; validates all before sending any."""
        keys, server = self._topic(topic)
        now = time.time()
        pairs = [make_envelope(topic, p, now, self.max_payload_bytes) for p in payloads]
        if not pairs:
            return []
        ids = [job_id for job_id, _ in pairs]
        try:
            pipe = server.client.pipeline(transaction=False)
            queue_pushes(pipe, keys, [env for _, env in pairs], now, delay)
            pipe.execute()
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot push to redis: {exc}") from exc
        return ids

    def queue_size(self, topic: str) -> int:
        """Jobs waiting in ``ready`` (not delayed, not in flight)."""
        keys, server = self._topic(topic)
        try:
            return int(server.client.llen(keys.ready))
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot reach redis: {exc}") from exc

    def close(self) -> None:
        for server in self._servers:
            server.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


