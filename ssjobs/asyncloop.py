"""``async def`` consumers with ``concurrency_per_worker > 1``: the jobs of a batch run in
waves of up to that many at once on the worker's event loop (one per worker, made after
fork). The readable twin of the hot loop's contract, for coroutines: same slot bookkeeping,
same outcome codes, and a wave is settled as the sequential loop settles one job.

Crash recovery keeps its meaning: the slot counts a wave as running until it has finished
and, if any of it failed, until that is settled; a worker that dies meanwhile has the whole
wave charged (docs/design.md, "Crashes").
"""
from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any, Callable

from ._fastloop_py import job_timeout, record
from .envelope import NUDGE, Job, decode
from .errors import EnvelopeError, JobTimeout, Reject, Retry
from .outcome import Code, Failure
from .scoreboard import BUSY, Slot


def run_waves(raws: list[bytes], call: Callable[[Job], Any], loop: asyncio.AbstractEventLoop,
              slot: Slot, ctl: Any, max_bytes: int, concurrency: int, timeout: float,
              done: list | None = None, track: bool = False) -> tuple[int, list[Failure]]:
    """Run ``raws`` in waves of ``concurrency``; returns ``(end, failures)`` after the first
    wave with a failure (the worker settles it), at the end, or when stopping between
    waves. ``timeout`` (0: none) bounds each job: then it fails with JobTimeout."""
    slot.set_state(BUSY)
    start = 0
    while start < len(raws):
        if ctl.stopping:
            return start, []
        wave = raws[start:start + concurrency]
        failures = _run_wave(wave, call, loop, slot, max_bytes, timeout, done, track)
        start += len(wave)
        if failures:
            return start, failures
        slot.add_done(len(wave))
    return start, []


def _run_wave(wave: list[bytes], call: Callable[[Job], Any], loop: asyncio.AbstractEventLoop,
              slot: Slot, max_bytes: int, timeout: float, done: list | None,
              track: bool) -> list[Failure]:
    failures: list[Failure] = []
    jobs: list[tuple[bytes, Job]] = []
    for raw in wave:
        if len(raw) > max_bytes:
            failures.append(Failure(raw, None, Code.TOO_LARGE, None, ""))
            continue
        try:
            jobs.append((raw, decode(raw)))
        except EnvelopeError as bad:
            if raw != NUDGE:  # a priority push's wake-up token is no job
                failures.append(Failure(raw, None, Code.MALFORMED, bad, ""))
    slot.set_pending(len(wave))   # all of it runs: charged if the worker dies now
    if jobs:
        slot.job_started(jobs[0][1].id, time.time())
        outcomes = loop.run_until_complete(_all(call, [job for _, job in jobs], timeout))
        slot.job_ended()
        for (raw, job), (code, exc, tb, elapsed, result) in zip(jobs, outcomes, strict=True):
            record(slot.buf, slot.offset, elapsed, code == 0)
            if code:
                failures.append(Failure(raw, job, Code(code), exc, tb))
            elif done is not None and (track or job.headers):
                done.append((job, result))
    if not failures:
        slot.set_pending(0)
    return failures


async def _all(call: Callable[[Job], Any], jobs: list[Job],
               timeout: float) -> list[tuple[int, BaseException | None, str, float, Any]]:
    return await asyncio.gather(*(_one(call, job, timeout) for job in jobs))


async def _one(call: Callable[[Job], Any], job: Job,
               timeout: float) -> tuple[int, BaseException | None, str, float, Any]:
    started = time.perf_counter()
    code, tb = 0, ""
    exc: BaseException | None = None
    result = None
    timeout = job_timeout(job.headers) or timeout if job.headers else timeout
    try:
        result = call(job)
        if hasattr(result, "__await__"):
            result = await (asyncio.wait_for(result, timeout) if timeout else result)
        if result is False:
            code = Code.FAILED
    except Retry as e:
        code, exc = Code.RETRY, e
    except Reject as e:
        code, exc = Code.REJECT, e
    except asyncio.TimeoutError:
        code, exc = Code.FAILED, JobTimeout(f"job ran past job_timeout={timeout}s")
    except Exception as e:  # noqa: BLE001 - any consumer failure is the job's outcome
        code, exc, tb = Code.FAILED, e, traceback.format_exc()
    return code, exc, tb, time.perf_counter() - started, result
