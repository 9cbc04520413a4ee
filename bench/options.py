"""What each job option and flow-control setting costs: the no-op drain of a topic with none
of them, then with priorities in use, a generous rate_limit, a generous concurrency and
tracking, interleaved in one run on one private redis-server; medians and ratios to the
plain drain of the same run.

    python bench/options.py [--reps 5] [--jobs 100000] [--workers 2] [--modes tracked,...]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import PrivateRedis  # noqa: E402

# name -> ([[jobs]] keys of the workers, push options)
MODES: dict[str, tuple[dict, dict]] = {
    "plain": ({}, {}),
    "priority 5": ({}, {"priority": 5}),
    "rate_limit 10M/s": ({"rate_limit": "10000000/s"}, {}),
    "concurrency 1000": ({"concurrency": 1000}, {}),
    "tracked": ({"track": True}, {}),
    # records expiring while the drain runs: the settle step deletes them as it goes
    "tracked ttl 1s": ({"track": True, "result_ttl": 1}, {}),
}


def drain(url: str, jobs: int, workers: int, job_options: dict, push_options: dict) -> float:
    """bench/drain.py's fill and drain; a tracked topic's records are checked after it."""
    import redis
    from drain import run_once

    from ssjobs.broker import TopicKeys

    rate = run_once(url, jobs, workers, 100, job_options, push_options)
    if job_options.get("track"):  # every job has its record, and it says succeeded
        client = redis.Redis.from_url(url)
        states: dict[bytes, int] = {}
        for record in client.hvals(TopicKeys("b", "bench").jobs):
            state = record.partition(b" ")[0]
            states[state] = states.get(state, 0) + 1
        if job_options.get("result_ttl", 3600) >= 3600:
            assert states == {b"succeeded": jobs}, states
        else:   # some expired and were deleted already
            assert set(states) <= {b"succeeded"}, states
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated subset of: " + ", ".join(MODES))
    ns = parser.parse_args()
    modes = {name: MODES[name] for name in ["plain", *ns.modes.split(",")] if name in MODES}
    import logging
    logging.disable(logging.INFO)
    rates: dict[str, list[float]] = {name: [] for name in modes}
    with PrivateRedis() as r:
        for _ in range(ns.reps):
            for name, (job_options, push_options) in modes.items():
                rates[name].append(drain(r.url, ns.jobs, ns.workers, job_options,
                                         push_options))
    plain = statistics.median(rates["plain"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<18} median {median:>9,.0f} jobs/s  ratio {median / plain:.3f}  "
              f"({', '.join(f'{v:,.0f}' for v in values)})")
    print(f"({ns.jobs:,} no-op jobs, {ns.workers} workers, batch 100, median of {ns.reps}, "
          "interleaved)")


if __name__ == "__main__":
    main()
