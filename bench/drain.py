"""Drain a pre-filled topic with K forked workers; jobs/s from first fetch to last ack."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_once(url: str, jobs: int, workers: int, batch: int = 100,
             job_options: dict | None = None, push_options: dict | None = None) -> float:
    """Fill, then drain; returns jobs/s. Runs in a process whose fastloop is already chosen.
    ``job_options``: more [[jobs]] keys of the workers; ``push_options``: of the pushes."""
    import redis

    from ssjobs.broker import Broker, TopicKeys
    from ssjobs.producer import Producer

    job_options = job_options or {}
    client = redis.Redis.from_url(url)
    client.flushall()
    if job_options.get("track"):
        Broker(client, "b", "bench").publish_conf(True, 3600)   # what a master does
    with Producer(url, prefix="b") as p:
        for start in range(0, jobs, 50_000):
            p.push_many("bench", [None] * min(50_000, jobs - start), **(push_options or {}))
    from workers import fork_workers, stop_workers
    go_r, go_w = os.pipe()
    pids = fork_workers(url, "bench", "noop:noop", workers, batch=batch, gate=go_r,
                        **job_options)
    os.close(go_r)
    stats = TopicKeys("b", "bench").stats
    time.sleep(0.3)  # let the children import
    started = time.perf_counter()
    os.write(go_w, b"x" * workers)
    while int(client.hget(stats, "processed") or 0) < jobs:
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    stop_workers(pids)
    processed = int(client.hget(stats, "processed"))
    assert processed == jobs, f"lost or duplicated jobs: {processed} != {jobs}"
    assert client.llen(TopicKeys("b", "bench").ready) == 0
    return jobs / elapsed


if __name__ == "__main__":
    url, jobs, workers, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    import logging
    logging.disable(logging.INFO)
    print(run_once(url, jobs, workers, batch))
