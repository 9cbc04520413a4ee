"""The raw reliable-Lua drain ceiling: what a minimal runner on redis-py + msgpack reaches
with the same reliability idea as ssjobs (a script moves a batch to a per-consumer list,
deleting that list acknowledges it), drained by 2 forked processes.

    python bench/ceiling.py URL JOBS BATCH     # prints jobs/s
"""
from __future__ import annotations

import os
import sys
import time

import msgpack
import redis

KEY = "raw:ready"
TAKE = """
local items = redis.call('LPOP', KEYS[1], ARGV[1])
if not items then return {} end
redis.call('RPUSH', KEYS[2], unpack(items))
return items
"""


def noop(*args: object) -> None:
    pass


def _consume(url: str, batch: int, gate: int) -> None:
    client = redis.Redis.from_url(url)
    take = client.register_script(TAKE)
    mine = f"raw:taken:{os.getpid()}"
    tasks = {"noop": noop}
    unpackb = msgpack.unpackb
    client.ping()
    os.read(gate, 1)
    while True:
        items = take(keys=[KEY, mine], args=[batch])
        if not items:
            break
        for raw in items:
            job = unpackb(raw)
            tasks[job["task"]](*job["args"])
        client.delete(mine)


def run_once(url: str, jobs: int, batch: int = 500, workers: int = 2) -> float:
    client = redis.Redis.from_url(url)
    client.delete(KEY)
    packb = msgpack.packb
    for start in range(0, jobs, 500):
        client.lpush(KEY, *[packb({"id": f"{i:032x}", "task": "noop", "args": [i]})
                            for i in range(start, min(jobs, start + 500))])
    gate_r, gate_w = os.pipe()
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            try:
                _consume(url, batch, gate_r)
            finally:
                os._exit(0)
        pids.append(pid)
    time.sleep(0.3)   # let them connect
    started = time.perf_counter()
    os.write(gate_w, b"x" * workers)
    for pid in pids:
        os.waitpid(pid, 0)
    elapsed = time.perf_counter() - started
    assert client.llen(KEY) == 0
    return jobs / elapsed


if __name__ == "__main__":
    print(run_once(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
