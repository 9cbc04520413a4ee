"""An asyncio producer, the twin of :class:`ssjobs.producer.Producer` for async apps
(FastAPI, aiohttp, ...): same arguments, same validation, same wire format.

    async with AsyncProducer("redis://127.0.0.1:6379/0") as p:
        job_id = await p.push("mail.send", {"to": "a@b.c"})
"""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Iterable

import redis.asyncio as aioredis

from . import envelope, tracking
from .broker import TopicKeys, translate
from .errors import BrokerUnavailable
from .names import check_topic
from .producer import (
    PUSH_SCRIPT,
    Tokens,
    chunked_calls,
    chunks_of,
    make_envelope,
    push_call,
    push_options,
    pushed_id,
)


class AsyncProducer:
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "ssjobs",
                 max_payload_bytes: int = envelope.DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.prefix = prefix
        self.max_payload_bytes = max_payload_bytes
        self._client = aioredis.Redis.from_url(url, socket_connect_timeout=5.0,
                                               socket_timeout=10.0)
        self._script = self._client.register_script(PUSH_SCRIPT)
        self._keys: dict[str, TopicKeys] = {}
        self._tokens = Tokens()   # one per push in flight: pushes run concurrently
        self._cancel: Any = None

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
        replies: list[Any] = []
        try:
            call_keys, call_args = push_call(keys, tokens[0], job_id, [env], now, opts)

            async def send() -> None:
                replies.append(await self._script(keys=call_keys, args=call_args))

            await self._send(send)
        finally:
            self._tokens.give(tokens)
        return pushed_id(replies[-1] if replies else None, job_id)

    async def push_many(self, topic: str, payloads: Iterable[Any], *, delay: float = 0,
                        priority: int = 0, max_retries: int | None = None,
                        timeout: float | None = None) -> list[str]:
        """Enqueue many jobs, pipelined in chunks; validates all before sending any."""
        keys = self._topic(topic)
        opts = push_options(delay=delay, priority=priority, max_retries=max_retries,
                            timeout=timeout)
        now = time.time()
        pairs = [make_envelope(topic, p, now, self.max_payload_bytes, opts.headers)
                 for p in payloads]
        if not pairs:
            return []
        tokens = self._tokens.take(chunks_of(len(pairs)))
        try:
            calls = chunked_calls(keys, tokens, pairs, now, opts)

            async def send() -> None:
                async with self._client.pipeline(transaction=False) as pipe:
                    for call_keys, call_args in calls:
                        await self._script(keys=call_keys, args=call_args, client=pipe)
                    await pipe.execute()

            await self._send(send)
        finally:
            self._tokens.give(tokens)
        return [job_id for job_id, _ in pairs]

    @staticmethod
    async def _send(call: Callable[[], Awaitable[Any]]) -> None:
        """Send, and once more after a lost connection (push.lua makes that safe)."""
        for attempt in (1, 2):
            try:
                with translate():
                    await call()
                return
            except BrokerUnavailable:
                if attempt == 2:
                    raise

    async def status(self, topic: str, job_id: str) -> dict | None:
        """A tracked job's record, or None (see Producer.status)."""
        keys = self._topic(topic)
        with translate():
            return tracking.parse(keys, job_id, await self._client.hgetall(keys.record(job_id)))

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
        await self._client.aclose()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
