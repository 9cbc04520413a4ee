"""One worker process consuming one topic: fetch a batch → run it → settle it, until told
to stop or recycled. The master forks it; ``python -m ssjobs.worker`` runs one alone.

Every Redis command the worker sends again after a lost reply is safe to repeat, and its
scoreboard slot always says how far it got, so a crash re-runs only the job it was running
(docs/design.md)."""
from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from . import asyncloop, envelope, fastloop, logs
from .broker import Broker, Outcomes, Rules, Settled, connect
from .config import JobConfig
from .errors import (
    BrokerUnavailable,
    ConsumerImportError,
    EnvelopeError,
    Fenced,
    JobTimeout,
    Retry,
)
from .loader import Consumer, load_consumer
from .outcome import Code, Failure
from .runtime import new_nonce, set_title
from .scoreboard import IDLE, STOPPING, Slot
from .text import plural
from .tracking import Records, Tracker, error_of

log = logging.getLogger("ssjobs.worker")

# Exit statuses the master reads to tell why a worker left (0 = asked to stop).
EXIT_OK = 0
EXIT_CONSUMER_IMPORT = 3   # consumer cannot be imported: the master backs off and alerts
EXIT_SETUP_FAILED = 4      # consumer.setup() raised
EXIT_RECYCLE_COUNT = 10    # handled max_consumer_count jobs
EXIT_RECYCLE_TIME = 11     # lived max_execute_time seconds
EXIT_RECYCLE_MEMORY = 12   # RSS passed max_memory_mb
EXIT_IDLE = 13             # dynamic worker idle for dynamic_idle_time
EXIT_ORPHANED = 14         # the master died
EXIT_FORKED_CHILD = 16     # a process forked by consumer code returned into the loop

IDLE_WAIT_S = 2.0          # blocking wait per idle round: a stop interrupts it, so it can be
                           # long: half a Redis command a second per idle worker
IDLE_POLL_S = 0.5          # an idle worker of a limited topic takes this often
IDLE_TRIM_EVERY_S = 1.0    # an idle worker of a tracked topic settles this often (at most
                           # once per idle wait): its settles delete expired records
IDLE_PROMOTE_EVERY_S = 30.0  # an idle worker looks at delayed jobs itself this often (its
                           # master promotes due ones every second; a known due time wakes it)
TICK_S = 1.0               # timer period for job timeouts, lifetime and memory checks
BACKOFF_MAX_S = 5.0        # cap of the reconnect back-off while Redis is down
STOPPING_RETRY_S = 2.0     # a stopping worker rides out this much of an outage, then leaves
                           # its position in the slot for its master's recovery
CONCURRENCY_PER_TAKE = 100  # a worker takes one job per this much of a topic's concurrency
BATCH_WORK_S = 0.02        # fetch about this much work at once: slow jobs are then shared
                           # fairly between workers, fast ones still come 100s per trip
REJOIN_SEQ_GAP = 1 << 32   # a worker registering again skips this many batch numbers
TOO_LARGE_KEPT_BYTES = 64 * 1024  # a too-large envelope's dead letter keeps this much of it
_PAGE = os.sysconf("SC_PAGE_SIZE")
# Modules of the loop's own bookkeeping: a soft timeout is never raised while one of them
# runs, only inside the consumer (so it cannot charge a job that already finished).
_LOOP_MODULES = frozenset({"ssjobs.worker", "ssjobs._fastloop_py", "ssjobs.scoreboard",
                           "ssjobs.envelope", "ssjobs.outcome", "ssjobs.broker"})


@dataclass
class WorkerIdentity:
    node: str                 # the master's incarnation: "hostname:masterpid:nonce"
    kind: int = 0             # 0 static, 1 dynamic
    index: int = 0            # worker number within its topic
    master_pid: int | None = None
    serial: int = 0           # the master's fork counter: a reused pid still gets a new name

    @property
    def name(self) -> str:
        return f"{self.node}/{os.getpid()}-{self.serial}"


class _Interrupted(BaseException):
    """Raised by the SIGTERM handler to end an idle wait (a blocking fetch, a back-off
    sleep) at once; never raised anywhere else."""


class Control:
    """Flags set by signal handlers, the tick and the at-fork hook; read by the loop."""

    __slots__ = ("stopping", "exit_code", "waiting", "forked")

    def __init__(self) -> None:
        self.stopping = False
        self.exit_code = EXIT_OK
        self.waiting = False   # in an idle wait that a stop may interrupt
        self.forked = False    # this process is a copy forked by the consumer

    def stop(self, code: int = EXIT_OK) -> None:
        if not self.stopping:
            self.stopping = True
            self.exit_code = code


def rules_of(job_cfg: JobConfig) -> Rules:
    """What the take step enforces for this topic (flow control, tracking)."""
    rate = job_cfg.rate
    return Rules(rate[0] if rate else 0, rate[1] if rate else 1.0, job_cfg.concurrency,
                 job_cfg.track, job_cfg.result_ttl)


def read_rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def retry_delay(job_cfg: JobConfig, attempts: int) -> float:
    """Exponential back-off with ±25% jitter: ~base, 2·base, 4·base ... (attempts ≥ 1)."""
    base = job_cfg.retry_backoff * (2 ** min(attempts - 1, 20))
    return base * random.uniform(0.75, 1.25)


class Worker:
    def __init__(self, job_cfg: JobConfig, redis_url: str, prefix: str, slot: Slot,
                 ident: WorkerIdentity) -> None:
        self.cfg = job_cfg
        self.ident = ident
        self.name = ident.name
        self.slot = slot
        self.ctl = Control()
        self.rules = rules_of(job_cfg)
        self.broker = Broker(connect(redis_url, socket_timeout=IDLE_WAIT_S + 10), prefix,
                             job_cfg.topic, self.rules)
        if self.rules.track:
            envelope.Job.tracker = Tracker(self.broker.client, self.broker.keys)
        self.max_bytes = getattr(job_cfg, "max_payload_bytes",
                                 envelope.DEFAULT_MAX_PAYLOAD_BYTES)
        self.seq = 0                  # the batch this worker holds, as Redis numbers it
        self.batch: list[bytes] = []  # its jobs, oldest first (the in-flight list)
        self.batch_began = 0.0        # when it began running them (epoch s)
        self.handled = 0
        self.started = time.time()
        self.last_job_at = self.started
        self.job_time: float | None = None  # moving average of seconds per job
        self._soft_timeout_for = 0.0        # start time of the job last sent JobTimeout
        self._aio: asyncio.AbstractEventLoop | None = None  # for async def consumers
        self.concurrency = 1                # jobs run at once (async consumers: up to N)
        self._outage = logs.OutageLogger(log)

    # -- lifecycle -----------------------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        try:
            consumer = load_consumer(self.cfg.consumer)
        except ConsumerImportError as exc:
            log.error("%s", exc)
            return EXIT_CONSUMER_IMPORT
        if consumer.setup is not None:
            try:
                self._finish_if_awaitable(consumer.setup())
            except Exception:
                log.exception("consumer %r setup() failed", self.cfg.consumer)
                return EXIT_SETUP_FAILED
        try:
            self._redis(self.broker.register_worker, self.name)
            self.slot.hold_batch(self.seq)
            self.slot.set_state(IDLE)
            log.info("worker started (consumer %s)", self.cfg.consumer)
            self.concurrency = self.cfg.concurrency_per_worker if consumer.is_async else 1
            self._loop(consumer)
        except _Interrupted:
            pass
        finally:
            self.slot.set_state(STOPPING)
            signal.setitimer(signal.ITIMER_REAL, 0)
            if consumer.teardown is not None and not self.ctl.forked:
                try:
                    self._finish_if_awaitable(consumer.teardown())
                except Exception:
                    log.exception("consumer %r teardown() failed", self.cfg.consumer)
        self._retire()
        log.info("worker exiting after %s (status %d)", plural(self.handled, "job"),
                 self.ctl.exit_code)
        return self.ctl.exit_code

    def _retire(self) -> None:
        """Give back what is still held and end the registration (the master's recovery
        after we exit does the same, so a failure here loses nothing)."""
        try:
            self._redis(self.broker.recover, self.name, self.slot.batch(), give_up=0)
        except _Interrupted:
            pass

    def _install_signals(self) -> None:
        ctl = self.ctl

        def on_stop(*_: object) -> None:
            ctl.stop()
            if ctl.waiting:
                ctl.waiting = False
                raise _Interrupted

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, self._tick)
        signal.setitimer(signal.ITIMER_REAL, TICK_S, TICK_S)
        signal.signal(signal.SIGUSR1, lambda *_: logs.reopen_logs())
        os.register_at_fork(after_in_child=self._in_forked_child)

    def _in_forked_child(self) -> None:
        """A process the consumer forked: it must never run, fetch or settle a job of ours
        (docs/design.md, "Processes a consumer forks"), and it dies with the worker."""
        self.ctl.forked = True
        self.ctl.stopping = True
        fastloop.mark_forked()
        signal.setitimer(signal.ITIMER_REAL, 0)
        _die_with_parent(signal.SIGTERM)

    def _tick(self, _signum: int, frame: FrameType | None) -> None:
        """Once a second: soft job timeout, lifetime, memory, orphan check."""
        now = time.time()
        cfg, ctl = self.cfg, self.ctl
        if self.ident.master_pid is not None and os.getppid() != self.ident.master_pid:
            ctl.stop(EXIT_ORPHANED)
        if cfg.max_execute_time and now - self.started > cfg.max_execute_time:
            ctl.stop(EXIT_RECYCLE_TIME)
        rss = read_rss()
        self.slot.set_rss(rss)
        if cfg.max_memory_mb and rss > cfg.max_memory_mb * 1024 * 1024:
            ctl.stop(EXIT_RECYCLE_MEMORY)
        started = self.slot.job_started_at
        timeout = self.slot.timeout_of_job(cfg.job_timeout)  # a job may bring its own
        if not started or not timeout or ctl.forked:
            return
        if now - started > timeout and started != self._soft_timeout_for \
                and self._aio is None \
                and (frame is None or frame.f_globals.get("__name__") not in _LOOP_MODULES):
            # Once per job, inside the consumer only. The start time stays in the slot:
            # the master's hard kill and the stuck_job alert still see it.
            self._soft_timeout_for = started
            raise JobTimeout(f"job ran past its timeout of {timeout:g}s")

    # -- the loop ------------------------------------------------------------------------
    def _loop(self, consumer: Consumer) -> None:
        ctl, slot = self.ctl, self.slot
        next_fetch = 0.0  # when to look at ready + delayed again while idle
        while not ctl.stopping:
            now = time.time()
            slot.beat(now)
            want = self._fetch_size()
            if want <= 0:
                ctl.stop(EXIT_RECYCLE_COUNT)
                break
            if not self.batch and now >= next_fetch:
                settled = self._settle(take=want)
                if not self.batch:
                    next_fetch = now + self._idle_look_again(settled)
            if not self.batch:
                if self.rules.limited:
                    # every take goes through the script that enforces the limits: wait
                    # without taking, then look again
                    self._sleep(max(0.0, next_fetch - time.time()))
                elif not self._wait(max(0.01, min(IDLE_WAIT_S, next_fetch - now))):
                    next_fetch = 0.0  # the wait's reply was lost: settle picks up its job
                if not self.batch:
                    self._idle_check(now)
                continue
            self._run(consumer)
            next_fetch = 0.0  # busy: fetch straight away next round
        if self.batch and not ctl.forked:  # held, not begun, and told to stop: hand back
            self._settle(held=len(self.batch), give_back=True)

    def _idle_look_again(self, settled: Settled) -> float:
        """Seconds an idle worker waits before it takes again: when flow control says, or
        (limited and tracked topics, which do not block) soon; else until the next delayed
        job is due, or IDLE_PROMOTE_EVERY_S."""
        if settled.wait is not None:
            return min(settled.wait, IDLE_PROMOTE_EVERY_S)
        wait = IDLE_POLL_S if self.rules.limited else \
            IDLE_TRIM_EVERY_S if self.rules.track else IDLE_PROMOTE_EVERY_S
        if settled.next_due is not None:
            wait = min(wait, max(0.0, settled.next_due - time.time()))
        return wait

    def _fetch_size(self) -> int:
        want = self._batch_limit()
        if self.cfg.max_consumer_count:
            want = min(want, self.cfg.max_consumer_count - self.handled)
        if self.rules.concurrency:
            # every job held counts against the limit, run or not: take about what runs
            # now, so jobs waiting in a batch never keep the topic far below its limit
            want = min(want, max(self.concurrency,
                                 self.rules.concurrency // CONCURRENCY_PER_TAKE))
        return want

    def _wait(self, timeout: float) -> bool:
        """Block for one job; it runs at once, without first fetching more: the first job
        after an idle spell waits for no second round trip (pickup latency). False when the
        wait failed without an answer (it may have moved a job all the same)."""
        if self.ctl.forked:
            self._forked_exit()
        self.ctl.waiting = True
        try:
            if self.ctl.stopping:
                return True
            first = self.broker.wait_one(self.name, timeout)
        except BrokerUnavailable as exc:
            self._note_down(exc)
            self._sleep(0.05)
            return False
        finally:
            self.ctl.waiting = False
        if first is not None:
            self.batch = [first]
            if self.rules.track:
                self._drop_if_cancelled(first)
        return True

    def _drop_if_cancelled(self, raw: bytes) -> None:
        """A job of a tracked topic that the wait handed over, not the take step (which
        drops cancelled jobs): one cancelled before it ran — a delayed job promoted to ready
        since, or one asked to stop, then requeued by a recovery — is settled as cancelled
        here and never runs. One more round trip for the first job after an idle spell,
        which also notes when the worker took it."""
        tracker = envelope.Job.tracker
        try:
            job = envelope.decode(raw)
        except EnvelopeError:
            return   # the run reports it
        if tracker is None or not tracker.handed_over(self.name, job.id):
            return
        log.info("job %s on %r was cancelled before it ran: dropped", job.id, job.topic)
        now = time.time()
        records = Records(now, now, self.rules.result_ttl)
        releases: list[tuple[str, str]] = []
        self._note_end(job, "cancelled", records, releases)
        self._settle(done=1, outcomes=Outcomes(records=records.records, expiry=records.expiry,
                                               releases=releases))

    def _batch_limit(self) -> int:
        """How many jobs to fetch: ~BATCH_WORK_S of work at the recent job time, at most
        batch_size; a single job until the job time is known. Never fewer than the
        async consumer runs at once (concurrency_per_worker)."""
        if self.job_time is None:
            return 1
        if self.job_time <= 0:
            return self.cfg.batch_size
        wanted = max(self.concurrency, int(BATCH_WORK_S / self.job_time))
        return max(1, min(self.cfg.batch_size, wanted))

    def _idle_check(self, now: float) -> None:
        idle_limit = self.cfg.dynamic_idle_time
        if self.ident.kind == 1 and idle_limit and now - self.last_job_at > idle_limit:
            self.ctl.stop(EXIT_IDLE)

    def _run(self, consumer: Consumer) -> None:
        """Run the batch up to its end, its first failure or a stop, then settle that part;
        the settle after a whole batch also takes the next one: one round trip per batch
        (a failure costs one more, so that a crash never loses its outcome)."""
        slot, batch = self.slot, self.batch
        started = time.perf_counter()
        self.batch_began = time.time()   # tracked jobs: their records' started_at
        finished: list[tuple[envelope.Job, Any]] = []   # successes a settle must know of
        if self.concurrency > 1:
            end, failures = asyncloop.run_waves(
                batch, consumer.call, self._event_loop(), slot, self.ctl, self.max_bytes,
                self.cfg.concurrency_per_worker, self.cfg.job_timeout, finished,
                self.rules.track)
        else:
            end, failure = fastloop.run_batch(batch, consumer.call, self._finish, slot.buf,
                                              slot.offset, self.ctl, self.max_bytes, finished,
                                              self.rules.track)
            failures = [failure] if failure is not None else []
        if self.ctl.forked:
            self._forked_exit()
        if end:
            per_job = (time.perf_counter() - started) / end
            self.job_time = per_job if self.job_time is None else (
                0.7 * self.job_time + 0.3 * per_job)
            self.handled += end
            self.last_job_at = time.time()
        slot.set_state(IDLE)
        ran = end
        if envelope.NUDGE in batch:  # a priority push's wake-up token is no job
            ran -= batch[:end].count(envelope.NUDGE)
        outcomes = self._outcomes(failures, ran - len(failures), finished)
        held = len(batch) - end
        if held and not failures:  # stopping: the jobs not begun go back
            self._settle(done=end, held=held, give_back=True, outcomes=outcomes)
            return
        take = 0 if held or self.ctl.stopping else max(0, self._fetch_size())
        self._settle(done=end, held=held, outcomes=outcomes, take=take)

    # -- async def consumers: one event loop per worker, made after fork ------------------
    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._aio is None:
            self._aio = asyncio.new_event_loop()
        return self._aio

    def _finish(self, awaitable: Any) -> Any:
        """Run what a consumer returned (a coroutine) to its end, within its timeout."""
        timeout = self.slot.timeout_of_job(self.cfg.job_timeout)
        try:
            return self._event_loop().run_until_complete(
                asyncio.wait_for(awaitable, timeout) if timeout else awaitable)
        except asyncio.TimeoutError:
            raise JobTimeout(f"job ran past job_timeout={timeout}s") from None

    def _finish_if_awaitable(self, result: Any) -> Any:
        return self._finish(result) if hasattr(result, "__await__") else result

    def _settle(self, *, done: int = 0, held: int = 0, give_back: bool = False,
                outcomes: Outcomes = Outcomes(), take: int = 0) -> Settled:
        """Settle through the broker, retried until Redis answers (a repeat is safe), then
        hold the batch it leaves us. Once stopping, an outage ends the attempt: the slot
        still says how far we got, for the master's recovery."""
        # while stopping, ride out a short outage only to save outcomes (else the slot has it)
        patience = STOPPING_RETRY_S if outcomes.failed or done else 0
        try:
            settled = self._redis(self.broker.settle, self.name, self.seq, done=done,
                                  held=held, give_back=give_back, outcomes=outcomes, take=take,
                                  give_up=patience)
        except Fenced as exc:
            self._rejoin(exc)
            return Settled([], None)
        if settled is None:
            return Settled([], None)
        kept = [] if give_back else self.batch[done:done + held]
        self.batch = kept + settled.jobs
        self.seq += 1
        self.slot.hold_batch(self.seq)
        return settled

    def _rejoin(self, exc: Fenced) -> None:
        """Redis no longer knows our batch: we were recovered (our host presumed dead while
        alive) or Redis lost its data. What we held was requeued by whoever recovered us;
        drop what we finished since, give back anything else, and register afresh, with
        batch numbers no stale command of ours can match (docs/design.md, "Hosts")."""
        log.warning("redis refused this worker's settle (%s): it was recovered elsewhere "
                    "or redis lost its data; the %d jobs it held are not run here, it "
                    "registers again and carries on", exc, len(self.batch))
        self._redis(self.broker.recover, self.name, self.slot.batch(), give_up=0)
        self.batch = []
        self.seq += REJOIN_SEQ_GAP
        self._redis(self.broker.rejoin, self.name, self.seq, give_up=0)
        self.slot.hold_batch(self.seq)

    # -- outcomes of failed jobs ---------------------------------------------------------
    def _outcomes(self, failures: list[Failure], processed: int,
                  finished: list[tuple[envelope.Job, Any]]) -> Outcomes:
        failed, retries, dead = 0, [], []
        records = (Records(self.batch_began, time.time(), self.rules.result_ttl)
                   if self.rules.track else None)
        releases: list[tuple[str, str]] = []
        for failure in failures:
            job = failure.job
            if job is not None and self._cancelled(job):
                log.info("job %s on %r stopped after it was cancelled: not retried",
                         job.id, job.topic)
                failed += 1
                self._note_end(job, "cancelled", records, releases)
                continue
            ran, retry, dead_letter = self._outcome(failure)
            failed += ran
            retries += retry
            dead += dead_letter
            if job is not None:
                self._note_end(job, "retrying" if retry else "dead", records, releases)
        for job, _ in finished:
            if job.headers:
                self._release(job, releases)
        if records is None:
            return Outcomes(processed, failed, retries, dead, releases=releases)
        tracker = envelope.Job.tracker
        records.successes(finished, tracker.latest if tracker is not None else None)
        return Outcomes(processed, failed, retries, dead, records=records.records,
                        expiry=records.expiry, releases=releases)

    def _cancelled(self, job: envelope.Job) -> bool:
        """A tracked job that failed after someone cancelled it ends there (its consumer
        may well have raised to stop)."""
        tracker = envelope.Job.tracker
        return self.rules.track and tracker is not None and tracker.cancelled(job.id)

    @staticmethod
    def _release(job: envelope.Job, releases: list[tuple[str, str]]) -> None:
        """A unique job that will not run again gives its key back."""
        unique = job.headers.get("unique")
        if isinstance(unique, str):
            releases.append((unique, job.id))

    def _note_end(self, job: envelope.Job, state: str, records: Records | None,
                  releases: list[tuple[str, str]]) -> None:
        """What the settle writes for a job that failed (or was cancelled): its record on
        a tracked topic, and its unique key given back once it will not run again."""
        if state != "retrying":
            self._release(job, releases)
        if records is None:
            return
        tracker = envelope.Job.tracker
        progress = tracker.progress_of(job.id) if tracker is not None else None
        if state == "cancelled":
            records.ended(state, job.id, job.attempts, job.enqueued_at, None, progress)
            return
        error = job.headers.get("error") or job.headers.get("last_error") or {}
        records.add(state, {"attempts": job.attempts, "enqueued_at": job.enqueued_at,
                            "error": error_of(str(error.get("type", "")),
                                              str(error.get("message", "")))},
                    job.id, progress)

    def _outcome(self, failure: Failure) -> tuple[int, list[tuple[float, bytes]], list[bytes]]:
        """(failed runs counted, retries, dead letters) of one failure."""
        now = time.time()
        job = failure.job
        if job is None:
            return 0, [], [self._malformed(failure, now)]
        error = self._error(failure.exc, failure.traceback, now)
        if job.attempts + 1 >= envelope.MAX_ATTEMPTS:
            error["reason"] = "malformed"
            job.headers["error"] = error
            self._log_failure(job, error, failure.traceback, "dead-lettered (attempts counter "
                              "at its limit)")
            return 1, [], [envelope.encode_job(job)]
        job.attempts += 1
        if failure.code == Code.REJECT:
            error["reason"] = "rejected"
        elif job.attempts > self._max_retries(job):
            error["reason"] = "failed"
        else:
            exc = failure.exc
            delay = exc.delay if isinstance(exc, Retry) and exc.delay is not None \
                else retry_delay(self.cfg, job.attempts)
            job.headers["last_error"] = error
            self._log_failure(job, error, failure.traceback, f"retry in {delay:.1f}s")
            return 1, [(now + delay, envelope.encode_job(job))], []
        job.headers["error"] = error
        self._log_failure(job, error, failure.traceback, f"dead-lettered ({error['reason']})")
        return 1, [], [envelope.encode_job(job)]

    def _max_retries(self, job: envelope.Job) -> int:
        """The job's own max_retries header (a push option), else the topic's."""
        value = job.headers.get("max_retries")
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1000:
            return value
        return self.cfg.max_retries

    def _error(self, exc: BaseException | None, tb: str, now: float) -> dict:
        if exc is None:
            etype, message = "ReturnedFalse", "consumer returned False"
        else:
            etype, message = type(exc).__name__, str(exc)
        return {"type": etype, "message": message, "traceback": tb, "failed_at": now,
                "worker": self.name}

    def _malformed(self, failure: Failure, now: float) -> bytes:
        raw = failure.raw
        if failure.code == Code.TOO_LARGE:
            reason, etype = "too_large", "TooLarge"
            message = f"envelope is {len(raw)} bytes, over max_payload_bytes={self.max_bytes}"
            raw = raw[:TOO_LARGE_KEPT_BYTES]
        else:
            reason, etype, message = "malformed", "EnvelopeError", str(failure.exc)
        log.error("%s job on topic %r dead-lettered: %s", reason.replace("_", " "),
                  self.cfg.topic, message)
        error = {"reason": reason, "type": etype, "message": message, "traceback": "",
                 "failed_at": now, "worker": self.name, "size": len(failure.raw)}
        return envelope.encode(envelope.new_id(now), self.cfg.topic, raw, 0, now,
                               {"error": error})

    def _log_failure(self, job: envelope.Job, error: dict, tb: str, outcome: str) -> None:
        # every failed run (explicit Retry included) is logged once, at ERROR
        extra = {"job_id": job.id, "topic": job.topic, "attempt": job.attempts}
        log.log(logging.ERROR, "job %s on %r failed (attempt %d): %s: %s; %s%s", job.id, job.topic,
                job.attempts, error["type"], error["message"], outcome,
                ("\n" + tb.rstrip()) if tb else "", extra=extra)

    # -- Redis outages -------------------------------------------------------------------
    def _redis(self, op, *args, give_up: float | None = None, **kwargs):
        """Run a Redis operation, retrying with back-off while Redis is down (every one
        the worker sends is safe to repeat); the outage is logged once when it starts and
        once when it ends. Once stopping, an operation with ``give_up`` seconds of patience
        is abandoned after them (returning None): the slot still says how far the worker
        got, for its master's recovery. Fenced propagates (see _rejoin)."""
        if self.ctl.forked:
            self._forked_exit()
        delay = 0.05
        deadline = None
        while True:
            try:
                result = op(*args, **kwargs)
            except BrokerUnavailable as exc:
                if self.ctl.stopping and give_up is not None:
                    deadline = deadline or time.monotonic() + give_up
                    if time.monotonic() >= deadline:
                        return None
                self._note_down(exc)
                self._sleep(delay + random.uniform(0, delay / 2))
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self._outage.note_success("redis")
            return result

    def _sleep(self, seconds: float) -> None:
        """A back-off sleep that a stop ends at once."""
        if self.ctl.stopping:
            time.sleep(min(seconds, 0.05))
            return
        self.ctl.waiting = True
        try:
            time.sleep(seconds)
        except _Interrupted:
            pass
        finally:
            self.ctl.waiting = False

    def _note_down(self, exc: BaseException) -> None:
        self.slot.beat(time.time())  # waiting out an outage is not hanging
        self._outage.note_failure("redis", exc)

    def _forked_exit(self) -> None:
        log.error("a process forked by consumer %r returned into the worker loop; it exits "
                  "without touching the worker's jobs (fork only to exec or _exit)",
                  self.cfg.consumer)
        os._exit(EXIT_FORKED_CHILD)


def main(argv: list[str] | None = None) -> int:
    """Run one worker alone (tests, debugging): python -m ssjobs.worker -c CFG TOPIC."""
    import argparse

    from . import syspath
    from .config import load_config
    from .loader import add_consumer_path
    from .scoreboard import private_slot

    parser = argparse.ArgumentParser(prog="python -m ssjobs.worker")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("topic")
    parser.add_argument("--log-stderr", action="store_true")
    ns = parser.parse_args(argv)
    syspath.isolate()  # consumers come from consumer_path only, never from the cwd
    cfg = load_config(ns.config)
    job_cfg = cfg.job(ns.topic)
    logs.setup_logging(None if ns.log_stderr else cfg.log.dir, level=cfg.log.level,
                       fmt=cfg.log.format, role=f"worker {job_cfg.topic} #0")
    add_consumer_path(cfg.process.consumer_path)
    slot = private_slot()
    slot.claim(os.getpid(), job_cfg.topic, 0, 0, time.time())
    ident = WorkerIdentity(node=f"{socket.gethostname()}:{os.getpid()}:{new_nonce()}")
    redis_cfg = cfg.redis_for(job_cfg)
    return Worker(job_cfg, redis_cfg.url, redis_cfg.prefix, slot, ident).run()


def run_forked(job_cfg: JobConfig, redis_url: str, prefix: str, slot: Slot,
               ident: WorkerIdentity, title: str, close_fds: tuple[int, ...] = ()) -> int:
    """Entry point of a worker right after the master forked it (child side).

    Starts clean: default signal handlers, no inherited wake-up fd or lock fd, a fresh
    random seed, its own Redis connection, and it dies with the master (PDEATHSIG)."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                signal.SIGCHLD, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _die_with_parent(signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if ident.master_pid is not None and os.getppid() != ident.master_pid:
        return EXIT_ORPHANED  # the master died before we could ask to be told
    random.seed()
    set_title(title)
    logs.set_role(title.removeprefix("ssjobs: ").split(": ", 1)[-1])
    # [notifier] log_notify: this worker's ERROR lines go to the master's relay (a no-op
    # while the master has none); its own socket, created after fork (ssjobs.notify.relay)
    from .notify.relay import install_worker_forwarder
    install_worker_forwarder(ident.master_pid)
    return Worker(job_cfg, redis_url, prefix, slot, ident).run()


def _die_with_parent(sig: int) -> None:
    """Ask Linux to send ``sig`` when our parent (the thread that forked us) exits."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the getppid() check in the tick remains
        pass


if __name__ == "__main__":
    raise SystemExit(main())
