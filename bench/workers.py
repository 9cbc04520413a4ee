"""Fork bench workers straight from the Worker class (no master: nothing else runs)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def fork_workers(url: str, topic: str, consumer: str, count: int, *, batch: int = 100,
                 gate: int | None = None, **options: object) -> list[int]:
    """Start ``count`` workers; with ``gate`` (a pipe's read end) each waits for a byte.
    ``options``: more [[jobs]] keys (rate_limit, track ...)."""
    from ssjobs.config import JobConfig
    from ssjobs.scoreboard import private_slot
    from ssjobs.worker import Worker, WorkerIdentity

    job_cfg = JobConfig(topic=topic, consumer=consumer, batch_size=batch, job_timeout=0,
                        **options)  # type: ignore[arg-type]
    pids = []
    for i in range(count):
        pid = os.fork()
        if pid == 0:
            import logging
            logging.disable(logging.INFO)
            if gate is not None:
                os.read(gate, 1)
            slot = private_slot()
            slot.claim(os.getpid(), topic, 0, i, time.time())
            os._exit(Worker(job_cfg, url, "b", slot, WorkerIdentity(node="bench:0:00000000")).run())
        pids.append(pid)
    return pids


def stop_workers(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, 15)
    for pid in pids:
        os.waitpid(pid, 0)
