"""Per-job cost of the hot loop alone (no Redis): decode, call, time, scoreboard writes."""
from __future__ import annotations

import importlib
import time

from ssjobs import envelope, scoreboard


class _Ctl:
    stopping = False


def noop(job):
    return None


def ns_per_job(module_name: str, batch: int = 100, rounds: int = 2000) -> float:
    mod = importlib.import_module(module_name)
    raws = [envelope.encode(envelope.new_id(), "bench", None) for _ in range(batch)]
    slot = scoreboard.private_slot()
    slot.claim(1, "bench", 0, 0, time.time())
    ctl = _Ctl()
    run = mod.run_batch
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds // 5):
            run(raws, noop, None, slot.buf, slot.offset, ctl, envelope.DEFAULT_MAX_PAYLOAD_BYTES)
        best = min(best, time.perf_counter() - started)
    return best / (rounds // 5 * batch) * 1e9
