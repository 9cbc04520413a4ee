"""An asyncio producer, the twin of :class:`ssjobs.producer.Producer` for async apps
(FastAPI, aiohttp, ...): same arguments, same validation, same wire format.

    async with AsyncProducer("redis://127.0.0.1:6379/0") as p:
        job_id = await p.push("mail.send", {"to": "a@b.c"})
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Iterable

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

try:
    from asyncio import timeout as _deadline  # Python 3.11+
except ImportError:  # 3.10: redis-py depends on it there
    from async_timeout import timeout as _deadline  # type: ignore[no-redef]

from . import envelope, tracking
from .broker import TopicKeys, translate
from .errors import BrokerUnavailable
from .names import check_topic
from .producer import (
    PUSH_SCRIPT,
    PUSH_SHA,
    Tokens,
    chunked_calls,
    chunks_of,
    make_envelope,
    new_envelopes,
    push_call,
    push_options,
    pushed_id,
    resp_packer,
)

MAX_CONNECTIONS = 64  # a burst of pushes shares these (one socket each), however large
IO_TIMEOUT_S = 10.0   # a push that gets no reply in this long is sent again (once); a
                      # push_many has a second more per chunk of jobs


class _Connections:
    """The producer's own connections for pushes, one per push in flight (at most
    MAX_CONNECTIONS; more pushes wait for one) and kept for the next: redis.asyncio's
    per-call pool and its per-read timeout task cost about as much as the round trip of a
    push. Each push has one deadline instead."""

    def __init__(self, client: aioredis.Redis) -> None:
        pool = client.connection_pool
        self._make = lambda: pool.connection_class(**dict(pool.connection_kwargs,
                                                          socket_timeout=None))
        self._free: list[Any] = []
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._pack = resp_packer()

    async def push(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """push.lua calls streamed down one connection, then their replies."""
        async with self._slots:
            return await self._push(calls)

    async def _push(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        conn = self._free.pop() if self._free else self._make()
        try:
            async with _deadline(IO_TIMEOUT_S + len(calls) - 1):
                if not conn.is_connected:
                    await conn.connect()
                for call_keys, call_args in calls:
                    await conn.send_packed_command(self._pack(
                        "EVALSHA", PUSH_SHA, len(call_keys), *call_keys, *call_args),
                        check_health=False)
                replies: list[Any] = []
                unloaded = []
                for i in range(len(calls)):
                    try:
                        replies.append(await conn.read_response())
                    except NoScriptError:  # a restarted Redis: such a call did nothing yet
                        replies.append(None)
                        unloaded.append(i)
                if unloaded:
                    await conn.send_packed_command(self._pack("SCRIPT", "LOAD", PUSH_SCRIPT))
                    await conn.read_response()
                for i in unloaded:
                    call_keys, call_args = calls[i]
                    await conn.send_packed_command(self._pack(
                        "EVALSHA", PUSH_SHA, len(call_keys), *call_keys, *call_args))
                    replies[i] = await conn.read_response()
        except asyncio.TimeoutError:
            await conn.disconnect()
            raise BrokerUnavailable(f"no reply from Redis in {IO_TIMEOUT_S:g} s") from None
        except BaseException:
            await conn.disconnect()   # replies may be left unread: never reuse it
            raise
        self._free.append(conn)
        return replies

    async def close(self) -> None:
        while self._free:
            await self._free.pop().disconnect()


class AsyncProducer:
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "ssjobs",
                 max_payload_bytes: int = envelope.DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.prefix = prefix
        self.max_payload_bytes = max_payload_bytes
        self._client = aioredis.Redis.from_url(url, socket_connect_timeout=5.0,
                                               socket_timeout=10.0)
        self._pushes = _Connections(self._client)
        self._keys: dict[str, TopicKeys] = {}
        self._tokens = Tokens()   # one per push in flight: pushes run concurrently
        self._cancel: Any = None
        self._status: Any = None

    def _topic(self, topic: str) -> TopicKeys:
        keys = self._keys.get(topic)
        if keys is None:
            check_topic(topic)
            keys = self._keys[topic] = TopicKeys(self.prefix, topic)
        return keys

    async def push(self, topic: str, payload: Any = None, *, delay: float = 0,
                   priority: int = 0, unique_key: str | None = None, unique_for: float = 3600,
                   max_retries: int | None = None, timeout: float | None = None) -> str:
        """Enqueue one job; returns its id (or the holder's, see Producer.push). Enqueued
        once, even when the reply is lost and the push is sent again."""
        keys = self._topic(topic)
        opts = push_options(delay=delay, priority=priority, unique_key=unique_key,
                            unique_for=unique_for, max_retries=max_retries, timeout=timeout)
        now = time.time()
        job_id, env = make_envelope(topic, payload, now, self.max_payload_bytes, opts.headers)
        tokens = self._tokens.take()
        try:
            replies = await self._send([push_call(keys, tokens[0], job_id, [env], now, opts)])
        finally:
            self._tokens.give(tokens)
        return pushed_id(replies[0], job_id)

    async def push_many(self, topic: str, payloads: Iterable[Any], *, delay: float = 0,
                        priority: int = 0, max_retries: int | None = None,
                        timeout: float | None = None) -> list[str]:
        """Enqueue many jobs, pipelined in chunks; validates all before sending any."""
        keys = self._topic(topic)
        opts = push_options(delay=delay, priority=priority, max_retries=max_retries,
                            timeout=timeout)
        now = time.time()
        ids, envs = new_envelopes(topic, payloads, now, self.max_payload_bytes, opts.headers)
        if not ids:
            return []
        tokens = self._tokens.take(chunks_of(len(ids)))
        try:
            await self._send(chunked_calls(keys, tokens, ids, envs, now, opts))
        finally:
            self._tokens.give(tokens)
        return ids

    async def _send(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Send, and once more after a lost connection (push.lua makes that safe)."""
        for attempt in (1, 2):
            try:
                with translate():
                    return await self._pushes.push(calls)
            except BrokerUnavailable:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def status(self, topic: str, job_id: str) -> dict | None:
        """A tracked job's record, or None (see Producer.status)."""
        keys = self._topic(topic)
        if self._status is None:
            self._status = self._client.register_script(tracking.STATUS_SCRIPT)
        with translate():
            return tracking.parse(keys, job_id,
                                  await self._status(**tracking.status_call(keys, job_id)))

    async def cancel(self, topic: str, job_id: str) -> str | None:
        """Cancel a tracked job; the state it found, or None (see Producer.cancel)."""
        if self._cancel is None:
            self._cancel = self._client.register_script(tracking.CANCEL_SCRIPT)
        with translate():
            return tracking.found_state(
                await self._cancel(**tracking.cancel_call(self._topic(topic), job_id)))

    async def queue_size(self, topic: str) -> int:
        """Jobs waiting in ``ready`` (not delayed, not in flight)."""
        with translate():
            return int(await self._client.llen(self._topic(topic).ready))

    async def close(self) -> None:
        await self._pushes.close()
        await self._client.aclose()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
