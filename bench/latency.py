"""Pickup latency: jobs pushed one at a time at ~500/s to 2 idle workers;
enqueue → consumer start, measured by the consumer against job.enqueued_at.

    python bench/latency.py REDIS_URL JOBS [--track]
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_once(url: str, jobs: int = 2000, rate: float = 500.0,
             job_options: dict | None = None) -> list[float]:
    """``job_options``: more [[jobs]] keys of the workers (``track`` ...)."""
    import redis

    from ssjobs.broker import Broker
    from ssjobs.producer import Producer

    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"ssjobs-latency-{os.getpid()}.txt"
    out.unlink(missing_ok=True)
    os.environ["SSJOBS_BENCH_OUT"] = str(out)
    from workers import fork_workers, stop_workers
    job_options = job_options or {}
    if job_options.get("track"):
        Broker(redis.Redis.from_url(url), "b", "lat").publish_conf(True, 3600)
    pids = fork_workers(url, "lat", "noop:stamp", 2, **job_options)
    time.sleep(1.0)
    gap = 1.0 / rate
    with Producer(url, prefix="b") as p:
        next_at = time.perf_counter()
        for i in range(jobs):
            p.push("lat", i)
            next_at += gap
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    deadline = time.time() + 10
    while time.time() < deadline:
        if out.exists() and out.read_text().count("\n") >= jobs:
            break
        time.sleep(0.05)
    stop_workers(pids)
    lat = [float(x) for x in out.read_text().split()]
    out.unlink()
    assert len(lat) == jobs, f"lost or duplicated: {len(lat)} != {jobs}"
    return sorted(lat)


def percentile(sorted_values: list[float], q: float) -> float:
    idx = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[idx]


if __name__ == "__main__":
    import logging
    logging.disable(logging.INFO)
    lat = run_once(sys.argv[1], int(sys.argv[2]),
                   job_options={"track": True} if "--track" in sys.argv[3:] else None)
    print(percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 0.999))
