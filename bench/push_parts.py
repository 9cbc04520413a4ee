"""Where the time of one Producer.push goes: the same loop of single pushes, each variant
adding one part of what a push does, against redis-py's LPUSH of a prebuilt envelope.

    python bench/push_parts.py [REPS]      # medians of REPS interleaved reps
    PIN=1 python bench/push_parts.py       # client and redis-server on separate vCPUs

Reaches into the producer's internals (its own connection, its push token) on purpose:
the point is to price each part of the real path.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

N = 20_000
PAYLOAD = {"user": 1, "op": "mail"}
RAW_KEY = "raw:q"


def rate(push) -> float:
    started = time.perf_counter()
    for i in range(N):
        push(i)
    return N / (time.perf_counter() - started)


def main(reps: int) -> None:
    from common import PrivateRedis, median

    from ssjobs.producer import PUSH_SHA, Producer, make_envelope, push_call, push_options

    with PrivateRedis() as r:
        if os.environ.get("PIN"):
            os.sched_setaffinity(r.proc.pid, {1})
            os.sched_setaffinity(0, {0})
        client = redis.Redis.from_url(r.url)
        env = make_envelope("bench", PAYLOAD, time.time(), 1 << 20)[1]
        lpush_only = client.script_load("return redis.call('LPUSH', KEYS[1], ARGV[1])")
        with Producer(r.url, prefix="b") as p:
            p.push("bench", None)   # connect and load the script before the clock
            keys, server = p._topic("bench")
            conn = server._connection()
            push_keys = push_call(keys, p._tokens.take()[0], "", [env], 0.0, push_options())[0]

            def own(*args):
                conn.send_packed_command(conn.pack_command(*args), check_health=False)
                return conn.read_response()

            def script_push(envelope: bytes, marker: str):
                return own("EVALSHA", PUSH_SHA, len(push_keys), *push_keys, marker, "", 0, 0,
                           repr(time.time()), envelope)

            variants = {
                "redis-py LPUSH (baseline)": lambda i: client.lpush(RAW_KEY, env),
                "redis-py EVALSHA of an LPUSH": lambda i: client.evalsha(lpush_only, 1,
                                                                         RAW_KEY, env),
                "own connection, LPUSH": lambda i: own("LPUSH", RAW_KEY, env),
                "own connection, push.lua": lambda i: script_push(env, str(i)),
                "  + the envelope built": lambda i: script_push(
                    make_envelope("bench", PAYLOAD, time.time(), 1 << 20)[1], str(i)),
                "Producer.push": lambda i: p.push("bench", PAYLOAD),
            }
            rates: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(reps):
                for name, push in variants.items():
                    rates[name].append(rate(push))
                    client.delete(RAW_KEY, keys.ready)
    base = median(rates["redis-py LPUSH (baseline)"])
    for name, values in rates.items():
        m = median(values)
        print(f"{name:30s} {m:8,.0f}/s  {1e6 / m:6.1f} µs  {m / base:.3f}× the baseline")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
