"""An asyncio producer, the twin of :class:`ssjobs.producer.Producer` for async apps
(FastAPI, aiohttp, ...): same arguments, same validation, same wire format.

    async with AsyncProducer("redis://127.0.0.1:6379/0") as p:
        job_id = await p.push("mail.send", {"to": "a@b.c"})
"""
from __future__ import annotations

import time
from typing import Any, Iterable

import redis.asyncio as aioredis

from . import envelope
from .broker import CONNECTION_ERRORS, TopicKeys
from .errors import BrokerUnavailable
from .producer import check_topic, make_envelope, push_command, queue_pushes


class AsyncProducer:
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "ssjobs",
                 max_payload_bytes: int = envelope.DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.prefix = prefix
        self.max_payload_bytes = max_payload_bytes
        self._client = aioredis.Redis.from_url(url, socket_connect_timeout=5.0,
                                               socket_timeout=10.0)
        self._keys: dict[str, TopicKeys] = {}

    def _topic(self, topic: str) -> TopicKeys:
        keys = self._keys.get(topic)
        if keys is None:
            check_topic(topic)
            keys = self._keys[topic] = TopicKeys(self.prefix, topic)
        return keys

    async def push(self, topic: str, payload: Any = None, *, delay: float = 0) -> str:
        """Enqueue one job; returns its id. ``delay`` seconds: run no earlier than that."""
        keys = self._topic(topic)
        now = time.time()
        job_id, env = make_envelope(topic, payload, now, self.max_payload_bytes)
        try:
            await self._client.execute_command(*push_command(keys, env, now, delay))
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot push to redis: {exc}") from exc
        return job_id

    async def push_many(self, topic: str, payloads: Iterable[Any], *,
                        delay: float = 0) -> list[str]:
        """Enqueue many jobs, pipelined in chunks; validates all before sending any."""
        keys = self._topic(topic)
        now = time.time()
        pairs = [make_envelope(topic, p, now, self.max_payload_bytes) for p in payloads]
        if not pairs:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                queue_pushes(pipe, keys, [env for _, env in pairs], now, delay)
                await pipe.execute()
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot push to redis: {exc}") from exc
        return [job_id for job_id, _ in pairs]

    async def queue_size(self, topic: str) -> int:
        """Jobs waiting in ``ready`` (not delayed, not in flight)."""
        try:
            return int(await self._client.llen(self._topic(topic).ready))
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot reach redis: {exc}") from exc

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
