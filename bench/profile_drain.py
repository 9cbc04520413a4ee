"""Where a worker's time goes while draining: cProfile of one worker, in-process.

    python bench/profile_drain.py [jobs]
"""
from __future__ import annotations

import cProfile
import pstats
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PrivateRedis  # noqa: E402


def main(jobs: int = 200_000) -> None:
    import logging

    from ssjobs.config import JobConfig
    from ssjobs.producer import Producer
    from ssjobs.scoreboard import private_slot
    from ssjobs.worker import Worker, WorkerIdentity

    logging.disable(logging.INFO)
    with PrivateRedis() as r:
        with Producer(r.url, prefix="b") as p:
            for start in range(0, jobs, 50_000):
                p.push_many("bench", [None] * min(50_000, jobs - start))
        slot = private_slot()
        slot.claim(1, "bench", 0, 0, time.time())
        cfg = JobConfig(topic="bench", consumer="noop:noop", job_timeout=0)
        worker = Worker(cfg, r.url, "b", slot, WorkerIdentity(node="prof:0:00000000"))
        client = r.client()

        def stop_when_done():
            while int(client.hget("b:{bench}:stats", "processed") or 0) < jobs:
                time.sleep(0.01)
            worker.ctl.stop()

        threading.Thread(target=stop_when_done, daemon=True).start()
        prof = cProfile.Profile()
        started = time.perf_counter()
        prof.runcall(worker.run)
        print(f"{jobs / (time.perf_counter() - started):,.0f} jobs/s under the profiler")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
