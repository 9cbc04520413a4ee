"""Producer speed against the raw-Redis ceilings, measured in one run (interleaved reps):

    push_many  vs  a raw loop packing each payload and sending variadic LPUSH of 500
    push       vs  a bare redis-py LPUSH of the same envelope (client kept open)
    AsyncProducer.push  vs  a bare redis.asyncio LPUSH of the same envelope

Every variant pushes the same ~20-byte payloads and its count is checked in Redis.
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import msgpack
import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))

PAYLOADS = [{"user": 10_000 + i, "op": "mail"} for i in range(500)]   # 20 bytes packed
RAW_KEY = "raw:q"


def _payload(i: int) -> dict:
    return PAYLOADS[i % len(PAYLOADS)]


def raw_many(client: redis.Redis, n: int) -> float:
    packb = msgpack.packb
    started = time.perf_counter()
    for start in range(0, n, 500):
        client.lpush(RAW_KEY, *[packb(_payload(i)) for i in range(start, min(n, start + 500))])
    return n / (time.perf_counter() - started)


def ours_many(producer, n: int) -> float:
    payloads = [_payload(i) for i in range(n)]   # built before the clock: raw's are lazy
    started = time.perf_counter()
    producer.push_many("bench", payloads)
    return n / (time.perf_counter() - started)


def _one_envelope() -> bytes:
    from ssjobs.producer import make_envelope
    return make_envelope("bench", _payload(0), time.time(), 1 << 20)[1]


def raw_one(client: redis.Redis, n: int) -> float:
    env = _one_envelope()
    started = time.perf_counter()
    for _ in range(n):
        client.lpush(RAW_KEY, env)
    return n / (time.perf_counter() - started)


def ours_one(producer, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        producer.push("bench", _payload(i))
    return n / (time.perf_counter() - started)


async def _raw_async(url: str, n: int) -> float:
    env = _one_envelope()
    client = aioredis.Redis.from_url(url)
    await client.ping()
    started = time.perf_counter()
    for _ in range(n):
        await client.lpush(RAW_KEY, env)
    rate = n / (time.perf_counter() - started)
    await client.aclose()
    return rate


async def _ours_async(url: str, n: int) -> float:
    from ssjobs.aio import AsyncProducer

    async with AsyncProducer(url, prefix="b") as producer:
        await producer.push("bench", None)   # connect and load the script before the clock
        started = time.perf_counter()
        for i in range(n):
            await producer.push("bench", _payload(i))
        return n / (time.perf_counter() - started)


def run(url: str, reps: int, n_many: int = 200_000, n_one: int = 20_000) -> dict:
    """{name: (ours median, raw median, ratio of medians)}; every count checked."""
    from ssjobs.broker import TopicKeys
    from ssjobs.producer import Producer

    client = redis.Redis.from_url(url)
    ready = TopicKeys("b", "bench").ready
    rates: dict[str, list[float]] = {}

    def measure(name: str, fn, n: int, key: str, extra: int = 0) -> None:
        client.delete(RAW_KEY, ready)
        rates.setdefault(name, []).append(fn(n))
        got = client.llen(key)
        assert got == n + extra, f"{name}: {got} jobs in Redis, pushed {n + extra}"

    with Producer(url, prefix="b") as producer:
        producer.push("bench", None)          # connect and load the script before the clock
        for _ in range(reps):
            measure("raw many", lambda n: raw_many(client, n), n_many, RAW_KEY)
            measure("push_many", lambda n: ours_many(producer, n), n_many, ready)
            measure("raw one", lambda n: raw_one(client, n), n_one, RAW_KEY)
            measure("push", lambda n: ours_one(producer, n), n_one, ready)
            measure("raw async", lambda n: asyncio.run(_raw_async(url, n)), n_one, RAW_KEY)
            measure("async push", lambda n: asyncio.run(_ours_async(url, n)), n_one, ready, 1)
    client.delete(RAW_KEY, ready)
    from common import median
    med = {name: median(values) for name, values in rates.items()}
    return {"push_many": (med["push_many"], med["raw many"]),
            "push": (med["push"], med["raw one"]),
            "async push": (med["async push"], med["raw async"])}


if __name__ == "__main__":
    from common import PrivateRedis

    with PrivateRedis() as r:
        for name, (ours, raw) in run(r.url, int(sys.argv[1]) if len(sys.argv) > 1 else 3).items():
            print(f"{name}: {ours:,.0f} jobs/s, raw {raw:,.0f} jobs/s, ratio {ours / raw:.3f}")
