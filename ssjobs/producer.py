"""Push jobs from application code (docs/reference.md, "Producer").

Imports only the broker, envelope, config and errors layers: an application that pushes
jobs pulls in no click, no process code and no worker-only dependency.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import weakref
from typing import Any, Iterable, Mapping, NamedTuple

from redis import ConnectionPool
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from . import envelope, fastloop
from .broker import TopicKeys, connect, translate, with_lib
from .delays import push_delay
from .errors import BrokerUnavailable
from .names import check_topic

CHUNK_SIZE = 1_000   # envelopes per push command: big enough to amortise the round trip,
                     # small enough to keep one command well under Redis' 512 MB limit
PUSH_SCRIPT = with_lib("push")
MAX_UNIQUE_FOR_S = 366 * 24 * 3600.0
MAX_UNIQUE_KEY_BYTES = 512
PUSH_SHA = hashlib.sha1(PUSH_SCRIPT.encode()).hexdigest()


def resp_packer() -> Any:
    """What turns a command into RESP bytes for the producer's own connections: hiredis'
    ``pack_command`` called straight when it is there (redis-py's wrapper around it first
    re-encodes every argument in Python: 3 µs of a push's ~18 µs of Python, which a round
    trip on a VM makes cost more again), else redis-py's pure-Python packer. Either gives
    a list of bytes, what ``send_packed_command`` takes."""
    try:
        from hiredis import pack_command
    except ImportError:   # not installed, or older than 2.1
        from redis._parsers.encoders import Encoder
        from redis.connection import PythonRespSerializer

        return PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode).pack
    return lambda *args: [pack_command(args)]


_pack = resp_packer()


class PushOptions(NamedTuple):
    """The options of a push (docs/reference.md, "Producer"), checked: what goes in the
    envelope's headers (for the worker) and what the push script needs."""
    delay: float = 0.0
    priority: int = 0
    unique_key: str | None = None
    unique_for: float = 3600.0
    headers: dict[str, Any] | None = None


def push_options(*, delay: Any = 0, priority: Any = 0, unique_key: Any = None,
                 unique_for: Any = 3600, max_retries: Any = None,
                 timeout: Any = None) -> PushOptions:
    """ValueError naming the argument for anything out of range."""
    delay = push_delay(delay)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise ValueError(f"priority must be an integer 0..9, got {priority!r}")
    headers: dict[str, Any] = {}
    if priority:
        headers["priority"] = priority
    if unique_key is not None:
        if not isinstance(unique_key, str) or not unique_key:
            raise ValueError(f"unique_key must be a non-empty string, got {unique_key!r}")
        if len(unique_key.encode()) > MAX_UNIQUE_KEY_BYTES:
            raise ValueError(f"unique_key must be at most {MAX_UNIQUE_KEY_BYTES} bytes")
        headers["unique"] = unique_key
    unique_for = _seconds("unique_for", unique_for, 1, MAX_UNIQUE_FOR_S)
    if max_retries is not None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) \
                or not 0 <= max_retries <= 1000:
            raise ValueError(f"max_retries must be an integer 0..1000, got {max_retries!r}")
        headers["max_retries"] = max_retries
    if timeout is not None:
        headers["timeout"] = _seconds("timeout", timeout, 0.001, MAX_UNIQUE_FOR_S)
    return PushOptions(delay, priority, unique_key, unique_for, headers or None)


def _seconds(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not low <= float(value) <= high:
        raise ValueError(f"{name} must be a number of seconds in {low:g}..{high:g}, "
                         f"got {value!r}")
    return float(value)


def new_envelopes(topic: str, payloads: Iterable[Any], now: float, max_payload_bytes: int,
                  headers: dict[str, Any] | None = None) -> tuple[list[str], list[bytes]]:
    """(job ids, envelopes) of new jobs; TypeError/ValueError before anything reaches Redis.
    Encoding the payloads is most of the cost: the rest is assembled in one pass (compiled
    when the extension is there)."""
    bodies = envelope.pack_payloads(payloads, max_payload_bytes)
    prefix, first = envelope.id_block(now, len(bodies))
    return fastloop.assemble(prefix, first, envelope.new_envelope_middle(topic, now, headers),
                             bodies)


def make_envelope(topic: str, payload: Any, now: float, max_payload_bytes: int,
                  headers: dict[str, Any] | None = None) -> tuple[str, bytes]:
    """(job id, envelope) of one new job (see new_envelopes)."""
    ids, envs = new_envelopes(topic, (payload,), now, max_payload_bytes, headers)
    return ids[0], envs[0]


def push_call(keys: TopicKeys, token: str, marker: str, envs: list[bytes], now: float,
              opts: PushOptions = PushOptions()) -> tuple[list[str], list[Any]]:
    """(KEYS, ARGV) of one push.lua call enqueueing ``envs`` once under ``token``."""
    due = repr(now + opts.delay) if opts.delay > 0 else ""
    unique = keys.unique(opts.unique_key or "")
    unique_for = int(opts.unique_for) if opts.unique_key else 0
    return ([keys.ready, keys.delayed, keys.push_marker(token), keys.conf, unique],
            [marker, due, opts.priority, unique_for, repr(now), *envs])


def pushed_id(reply: Any, job_id: str) -> str:
    """The id a push returns: its own, or, when its unique key was held, the holder's."""
    if reply and int(reply[0]) == 2:
        held = reply[1]
        return held.decode() if isinstance(held, bytes) else str(held)
    return job_id


def chunked_calls(keys: TopicKeys, tokens: list[str], ids: list[str], envs: list[bytes],
                  now: float, opts: PushOptions) -> list[tuple[list[str], list[Any]]]:
    """One push.lua call per chunk of CHUNK_SIZE jobs, each under its own token, marked by
    its first job's id: a retried push_many enqueues every chunk once."""
    if opts.unique_key is not None:
        raise ValueError("unique_key names one job: push it with push(), not push_many()")
    return [push_call(keys, token, ids[start], envs[start:start + CHUNK_SIZE], now, opts)
            for token, start in zip(tokens, range(0, len(envs), CHUNK_SIZE), strict=True)]


def chunks_of(n: int) -> int:
    return -(-n // CHUNK_SIZE)


class Tokens:
    """Push tokens (docs/design.md, "Lost replies"): a token is used by one push at a time,
    so its marker key tells a retry of that push from a new one. Tokens are reused; a
    forked child starts with none of its parent's."""

    def __init__(self) -> None:
        self._free: list[str] = []
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._free.clear)

    def take(self, n: int = 1) -> list[str]:
        with self._lock:
            got = [self._free.pop() for _ in range(min(n, len(self._free)))]
        return got + [os.urandom(8).hex() for _ in range(n - len(got))]

    def give(self, tokens: list[str]) -> None:
        with self._lock:
            self._free.extend(tokens)


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
        self.script = self.client.register_script(PUSH_SCRIPT)

    def push(self, keys: list[str], args: list[Any]) -> Any:
        """One push.lua call; its reply."""
        return self.push_calls([(keys, args)])[0]

    def push_calls(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """push.lua calls, their replies. On a plain server: streamed down this thread's own
        connection (made once and kept) and the replies read after the last, so Redis runs
        one chunk while the next is sent, and redis-py's per-call pool and instrumentation
        work (about a third of a single push) is skipped. Sent again once on a dropped
        link: push.lua makes that safe."""
        for attempt in (1, 2):
            try:
                return self._stream(calls) if self.direct else self._push_routed(calls)
            except BrokerUnavailable:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _connection(self) -> Any:
        local = self.local
        conn = local.__dict__.get("conn")
        if conn is None or local.pid != os.getpid():
            # Not from the pool: the pool would keep a thread's connection alive after the
            # thread is gone; this one is closed when the thread-local is dropped.
            pool = self.client.connection_pool
            conn = local.conn = pool.connection_class(**pool.connection_kwargs)
            local.pid = os.getpid()
            self.own.add(conn)
        return conn

    def _stream(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        conn = self._connection()
        try:
            with translate():
                return self._exchange(conn, calls)
        except BaseException:
            conn.disconnect()   # replies may be left unread: never reuse it
            raise

    @staticmethod
    def _exchange(conn: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        for call_keys, call_args in calls:
            conn.send_packed_command(_pack("EVALSHA", PUSH_SHA, len(call_keys), *call_keys,
                                           *call_args), check_health=False)
        replies: list[Any] = []
        unloaded = []
        for i in range(len(calls)):
            try:
                replies.append(conn.read_response())
            except NoScriptError:   # a restarted Redis: such a call did nothing yet
                replies.append(None)
                unloaded.append(i)
        if unloaded:
            conn.send_command("SCRIPT", "LOAD", PUSH_SCRIPT)
            conn.read_response()
            for i in unloaded:
                call_keys, call_args = calls[i]
                conn.send_command("EVALSHA", PUSH_SHA, len(call_keys), *call_keys, *call_args)
                replies[i] = conn.read_response()
        return replies

    def _push_routed(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Through the client, which routes each command (a cluster or sentinel connection
        made outside its pool would not know which server to talk to); a cluster client
        refuses scripts in a pipeline: one call each, they are few (one per CHUNK_SIZE)."""
        with translate():
            if isinstance(self.client, RedisCluster) or len(calls) == 1:
                return [self.script(keys=call_keys, args=call_args)
                        for call_keys, call_args in calls]
            pipe = self.client.pipeline(transaction=False)
            for call_keys, call_args in calls:
                self.script(keys=call_keys, args=call_args, client=pipe)
            return pipe.execute()

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
        self._tokens = Tokens()
        self._declared: frozenset[str] | None = None   # from_config: the topics it declares
        self._config_path = ""

    @classmethod
    def from_config(cls, path: str | os.PathLike, **options: Any) -> Producer:
        """A producer for the config's Redis and prefix, routing topics with their own
        [jobs.redis]; it refuses topics the config does not declare (a typo would strand
        its jobs: no worker ever serves them)."""
        from .config import load_config  # only when asked: keeps `import producer` light

        cfg = load_config(path)
        routes = {job.topic: (job.redis.url, job.redis.prefix) for job in cfg.jobs
                  if job.redis is not None and job.redis != cfg.redis}
        producer = cls(cfg.redis.url, prefix=cfg.redis.prefix, routes=routes, **options)
        producer._declared = frozenset(job.topic for job in cfg.jobs)
        producer._config_path = str(cfg.path)
        return producer

    def _topic(self, topic: str) -> tuple[TopicKeys, _Server]:
        found = self._topics.get(topic)
        if found is None:
            check_topic(topic)
            if self._declared is not None and topic not in self._declared:
                raise ValueError(f"unknown topic {topic!r}: {self._config_path} declares "
                                 f"{', '.join(sorted(self._declared))}")
            server = self._routes.get(topic, self._default)
            found = self._topics[topic] = (TopicKeys(server.prefix, topic), server)
        return found

    def push(self, topic: str, payload: Any = None, *, delay: float = 0, priority: int = 0,
             unique_key: str | None = None, unique_for: float = 3600,
             max_retries: int | None = None, timeout: float | None = None) -> str:
        """Enqueue one job; returns its id (with ``unique_key``: the id of the job that holds
        the key, when one does). Enqueued once, even when the reply is lost and the push is
        sent again. Options: docs/reference.md, "Producer"."""
        opts = push_options(delay=delay, priority=priority, unique_key=unique_key,
                            unique_for=unique_for, max_retries=max_retries, timeout=timeout)
        return self._push(topic, payload, opts)[0]

    def push_unique(self, topic: str, payload: Any, unique_key: str, *, unique_for: float = 3600,
                    **options: Any) -> tuple[str, bool]:
        """``push`` with a unique key that says which happened: (the new job's id, True), or
        (the id of the job holding the key, False) when nothing was enqueued."""
        opts = push_options(unique_key=unique_key, unique_for=unique_for, **options)
        return self._push(topic, payload, opts)

    def _push(self, topic: str, payload: Any, opts: PushOptions) -> tuple[str, bool]:
        keys, server = self._topic(topic)
        now = time.time()
        job_id, env = make_envelope(topic, payload, now, self.max_payload_bytes, opts.headers)
        tokens = self._tokens.take()
        try:
            reply = server.push(*push_call(keys, tokens[0], job_id, [env], now, opts))
        finally:
            self._tokens.give(tokens)
        found = pushed_id(reply, job_id)
        return found, found == job_id

    def push_many(self, topic: str, payloads: Iterable[Any], *, delay: float = 0,
                  priority: int = 0, max_retries: int | None = None,
                  timeout: float | None = None) -> list[str]:
        """Enqueue many jobs, streamed in chunks; validates all before sending any. Sent
        again once after a lost connection: each chunk is enqueued once all the same."""
        keys, server = self._topic(topic)
        opts = push_options(delay=delay, priority=priority, max_retries=max_retries,
                            timeout=timeout)
        now = time.time()
        ids, envs = new_envelopes(topic, payloads, now, self.max_payload_bytes, opts.headers)
        if not ids:
            return []
        tokens = self._tokens.take(chunks_of(len(ids)))
        try:
            server.push_calls(chunked_calls(keys, tokens, ids, envs, now, opts))
        finally:
            self._tokens.give(tokens)
        return ids

    def status(self, topic: str, job_id: str) -> dict | None:
        """A tracked job's record (state, attempts, times, result, error, progress), or None
        when unknown or expired (docs/reference.md, "Tracked jobs")."""
        from . import tracking

        keys, server = self._topic(topic)
        return tracking.read(server.client, keys, job_id)

    def cancel(self, topic: str, job_id: str) -> str | None:
        """Cancel a tracked job; returns the state it found, None when unknown: a queued or
        delayed job never runs, a running one sees ``job.cancelled``, a finished one stays."""
        from . import tracking

        keys, server = self._topic(topic)
        return tracking.cancel(server.client, keys, job_id)

    def queue_size(self, topic: str) -> int:
        """Jobs waiting in ``ready`` (not delayed, not in flight)."""
        keys, server = self._topic(topic)
        with translate():
            return int(server.client.llen(keys.ready))

    def close(self) -> None:
        for server in self._servers:
            server.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


