"""One worker process consuming one topic: fetch a batch → run it → settle it, until told
to stop or recycled. The master forks it; ``python -m ssjobs.worker`` runs one alone."""
from __future__ import annotations

import logging
import os
import random
import signal
import socket
import time
from dataclasses import dataclass

from . import envelope, fastloop
from .broker import CONNECTION_ERRORS, Broker, connect
from .config import JobConfig
from .errors import ConsumerImportError, JobTimeout, Retry
from .loader import Consumer, load_consumer
from .runtime import set_title
from .scoreboard import IDLE, JOB_STARTED_AT, STOPPING, Slot

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

IDLE_WAIT_S = 1.0          # blocking wait per idle round: ~1 Redis command/s while idle
IDLE_PROMOTE_EVERY_S = 5.0 # an idle worker still promotes due delayed jobs this often
TICK_S = 1.0               # timer period for job timeouts, lifetime and memory checks
BACKOFF_MAX_S = 5.0        # cap of the reconnect back-off while Redis is down
STOPPING_RETRY_S = 30.0    # how long a stopping worker keeps trying to settle its batch
BATCH_WORK_S = 0.02        # fetch about this much work at once: slow jobs are then shared
                           # fairly between workers, fast ones still come 100s per trip
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class WorkerIdentity:
    node: str                 # "hostname:masterpid"
    kind: int = 0             # 0 static, 1 dynamic
    index: int = 0            # worker number within its topic
    master_pid: int | None = None

    @property
    def name(self) -> str:
        return f"{self.node}:{os.getpid()}"


class Control:
    """Flags set by signal handlers and the tick; read by the loop between jobs."""

    __slots__ = ("stopping", "exit_code")

    def __init__(self) -> None:
        self.stopping = False
        self.exit_code = EXIT_OK

    def stop(self, code: int = EXIT_OK) -> None:
        if not self.stopping:
            self.stopping = True
            self.exit_code = code


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
        self.broker = Broker(connect(redis_url, socket_timeout=IDLE_WAIT_S + 10), prefix,
                             job_cfg.topic)
        self.handled = 0
        self.started = time.time()
        self.last_job_at = self.started
        self.job_time: float | None = None  # moving average of seconds per job
        self._down_since: float | None = None
        self._failures_while_down = 0

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
                consumer.setup()
            except Exception:
                log.exception("consumer %r setup() failed", self.cfg.consumer)
                return EXIT_SETUP_FAILED
        self._redis(self.broker.register_worker, self.name, self.ident.node)
        self.slot.set_state(IDLE)
        log.info("worker started (consumer %s)", self.cfg.consumer)
        try:
            self._loop(consumer)
        finally:
            self.slot.set_state(STOPPING)
            signal.setitimer(signal.ITIMER_REAL, 0)
            if consumer.teardown is not None:
                try:
                    consumer.teardown()
                except Exception:
                    log.exception("consumer %r teardown() failed", self.cfg.consumer)
        self._redis(self.broker.unregister_worker, self.name, give_up=True)
        log.info("worker exiting after %d jobs (status %d)", self.handled, self.ctl.exit_code)
        return self.ctl.exit_code

    def _install_signals(self) -> None:
        ctl = self.ctl
        signal.signal(signal.SIGTERM, lambda *_: ctl.stop())
        signal.signal(signal.SIGINT, lambda *_: ctl.stop())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, self._tick)
        signal.setitimer(signal.ITIMER_REAL, TICK_S, TICK_S)
        try:
            from . import logs
            signal.signal(signal.SIGUSR1, lambda *_: logs.reopen_logs())
        except ImportError:
            pass

    def _tick(self, *_: object) -> None:
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
        if cfg.job_timeout:
            started = self.slot._get(JOB_STARTED_AT)
            if started and now - started > cfg.job_timeout:
                self.slot._put(JOB_STARTED_AT, 0.0)
                raise JobTimeout(f"job ran past job_timeout={cfg.job_timeout}s")

    # -- the loop ------------------------------------------------------------------------
    def _loop(self, consumer: Consumer) -> None:
        ctl, slot = self.ctl, self.slot
        next_fetch = 0.0  # when to look at ready + delayed again while idle
        batch: list[bytes] = []  # the next batch, when settling the last one fetched it
        while not ctl.stopping:
            now = time.time()
            slot.beat(now)
            want = self._fetch_size()
            if want <= 0:
                ctl.stop(EXIT_RECYCLE_COUNT)
                break
            if not batch and now >= next_fetch:
                fetched = self._redis(self.broker.fetch, self.name, want)
                batch, due = fetched if fetched else ([], None)
                if not batch:
                    next_fetch = now + IDLE_PROMOTE_EVERY_S
                    if due is not None:
                        next_fetch = min(next_fetch, due)
            if not batch:
                batch = self._wait(max(0.01, min(IDLE_WAIT_S, next_fetch - now)))
                if not batch:
                    self._idle_check(now)
                    continue
            batch = self._run(consumer, batch)
            next_fetch = 0.0  # busy: fetch straight away next round
        if batch:  # fetched with the last settle, then told to stop: hand them back
            self._redis(self.broker.settle, self.name, 0, 0, (), (), batch)

    def _fetch_size(self) -> int:
        want = self._batch_limit()
        if self.cfg.max_consumer_count:
            want = min(want, self.cfg.max_consumer_count - self.handled)
        return want

    def _wait(self, timeout: float) -> list[bytes]:
        """Block for one job. It runs at once, without first fetching more: the first job
        after an idle spell waits for no second round trip (pickup latency)."""
        first = self._redis(self.broker.wait_one, self.name, timeout)
        if first is not None and self.ctl.stopping:  # a stop came while we waited: hand back
            self._redis(self.broker.settle, self.name, 0, 0, (), (), [first])
            return []
        return [first] if first is not None else []

    def _batch_limit(self) -> int:
        """How many jobs to fetch: ~BATCH_WORK_S of work at the recent job time, at most
        batch_size; a single job until the job time is known."""
        if self.job_time is None:
            return 1
        if self.job_time <= 0:
            return self.cfg.batch_size
        return max(1, min(self.cfg.batch_size, int(BATCH_WORK_S / self.job_time)))

    def _idle_check(self, now: float) -> None:
        idle_limit = self.cfg.dynamic_idle_time
        if self.ident.kind == 1 and idle_limit and now - self.last_job_at > idle_limit:
            self.ctl.stop(EXIT_IDLE)

    def _run(self, consumer: Consumer, batch: list[bytes]) -> list[bytes]:
        """Run a batch and settle it; the settle also fetches the next batch (returned)
        unless the worker is stopping or at its job limit: one round trip per batch."""
        slot = self.slot
        started = time.perf_counter()
        processed, failures, unstarted = fastloop.run_batch(
            batch, consumer.call, slot.buf, slot.offset, self.ctl)
        ran = len(batch) - len(unstarted)
        if ran:
            per_job = (time.perf_counter() - started) / ran
            self.job_time = per_job if self.job_time is None else (
                0.7 * self.job_time + 0.3 * per_job)
        slot._put(JOB_STARTED_AT, 0.0)
        slot.set_state(IDLE)
        self.handled += ran
        self.last_job_at = time.time()
        retries, dead = self._classify(failures)
        ran_and_failed = sum(1 for f in failures if f[1] is not None)
        fetch_next = 0 if self.ctl.stopping else max(0, self._fetch_size())
        result = self._redis(self.broker.settle, self.name, processed, ran_and_failed, retries,
                             dead, unstarted, fetch_next)
        return result[0] if result else []

    def _classify(self, failures: list) -> tuple[list[tuple[float, bytes]], list[bytes]]:
        retries: list[tuple[float, bytes]] = []
        dead: list[bytes] = []
        now = time.time()
        for raw, job, code, exc, tb in failures:
            if job is None:
                dead.append(self._malformed(raw, exc, now))
                continue
            job.attempts += 1
            error = self._error(exc, tb, now)
            if code == fastloop.REJECT:
                error["reason"] = "rejected"
            elif job.attempts > self.cfg.max_retries:
                error["reason"] = "failed"
            else:
                delay = exc.delay if isinstance(exc, Retry) and exc.delay is not None \
                    else retry_delay(self.cfg, job.attempts)
                job.headers["last_error"] = error
                retries.append((now + delay, envelope.encode_job(job)))
                self._log_failure(job, error, tb, f"retry in {delay:.1f}s")
                continue
            job.headers["error"] = error
            dead.append(envelope.encode_job(job))
            self._log_failure(job, error, tb, f"dead-lettered ({error['reason']})")
        return retries, dead

    def _error(self, exc: BaseException | None, tb: str, now: float) -> dict:
        if exc is None:
            etype, message = "ReturnedFalse", "consumer returned False"
        else:
            etype, message = type(exc).__name__, str(exc)
        return {"type": etype, "message": message, "traceback": tb, "failed_at": now,
                "worker": self.name}

    def _malformed(self, raw: bytes, exc: BaseException, now: float) -> bytes:
        log.error("malformed job on topic %r dead-lettered: %s", self.cfg.topic, exc)
        error = {"reason": "malformed", "type": "EnvelopeError", "message": str(exc),
                 "traceback": "", "failed_at": now, "worker": self.name}
        return envelope.encode(envelope.new_id(now), self.cfg.topic, raw, 0, now,
                               {"error": error})

    def _log_failure(self, job: envelope.Job, error: dict, tb: str, outcome: str) -> None:
        # SPEC §4b: every failed run (explicit Retry included) once, at ERROR
        extra = {"job_id": job.id, "topic": job.topic, "attempt": job.attempts}
        log.log(logging.ERROR, "job %s on %r failed (attempt %d): %s: %s; %s%s", job.id, job.topic,
                job.attempts, error["type"], error["message"], outcome,
                ("\n" + tb.rstrip()) if tb else "", extra=extra)

    # -- Redis outages -------------------------------------------------------------------
    def _redis(self, op, *args, give_up: bool = False):
        """Run a Redis operation, retrying with back-off while Redis is down; the outage is
        logged once when it starts and once when it ends. Once stopping, a fetch is
        abandoned at once and anything else after STOPPING_RETRY_S (the master or a
        surviving host then recovers this worker's in-flight list)."""
        delay = 0.05
        deadline = None
        while True:
            try:
                result = op(*args)
            except CONNECTION_ERRORS as exc:
                if self.ctl.stopping:
                    deadline = deadline or time.time() + STOPPING_RETRY_S
                    is_fetch = op in (self.broker.fetch, self.broker.wait_one)
                    if is_fetch or time.time() > deadline:
                        give_up = True
                if give_up:
                    return None
                self._note_down(exc)
                time.sleep(delay + random.uniform(0, delay / 2))
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if self._down_since is not None:
                log.warning("redis is back after %.1fs (%d failed attempts)",
                            time.time() - self._down_since, self._failures_while_down)
                self._down_since = None
            return result

    def _note_down(self, exc: BaseException) -> None:
        self.slot.beat(time.time())  # waiting out an outage is not hanging
        if self._down_since is None:
            self._down_since = time.time()
            self._failures_while_down = 0
            log.warning("redis unavailable (%s); retrying with back-off", exc)
        self._failures_while_down += 1


def main(argv: list[str] | None = None) -> int:
    """Run one worker alone (tests, debugging): python -m ssjobs.worker -c CFG TOPIC."""
    import argparse

    from . import logs
    from .config import load_config
    from .loader import add_consumer_path
    from .scoreboard import private_slot

    parser = argparse.ArgumentParser(prog="python -m ssjobs.worker")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("topic")
    parser.add_argument("--log-stderr", action="store_true")
    ns = parser.parse_args(argv)
    cfg = load_config(ns.config)
    job_cfg = cfg.job(ns.topic)
    logs.setup_logging(None if ns.log_stderr else cfg.log.dir, level=cfg.log.level,
                       fmt=cfg.log.format, role=f"worker {job_cfg.topic} #0")
    add_consumer_path(cfg.process.consumer_path)
    slot = private_slot()
    slot.claim(os.getpid(), job_cfg.topic, 0, 0, time.time())
    ident = WorkerIdentity(node=f"{socket.gethostname()}:{os.getpid()}")
    redis_cfg = cfg.redis_for(job_cfg)
    return Worker(job_cfg, redis_cfg.url, redis_cfg.prefix, slot, ident).run()


if __name__ == "__main__":
    raise SystemExit(main())


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
    _die_with_parent()
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if ident.master_pid is not None and os.getppid() != ident.master_pid:
        return EXIT_ORPHANED  # the master died before we could ask to be told
    random.seed()
    set_title(title)
    try:
        from . import logs
        logs.set_role(title.removeprefix("ssjobs: ").split(": ", 1)[-1])
    except ImportError:
        pass
    # [notifier] log_notify: this worker's ERROR lines go to the master's relay (a no-op
    # while the master has none); its own socket, created after fork (ssjobs.notify.relay)
    from .notify.relay import install_worker_forwarder
    install_worker_forwarder(ident.master_pid)
    return Worker(job_cfg, redis_url, prefix, slot, ident).run()


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the master (the thread that forked us) exits."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the getppid() check in the tick remains
        pass
