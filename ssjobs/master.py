"""The master: a pre-fork arbiter that keeps the right workers alive for every topic.

Its loop is a few named steps: wait for a signal (bounded), handle it, reap children,
kill workers past their job timeout or heartbeat, spawn what is missing, and once a second
do the Redis housekeeping (node heartbeat, delayed-job promotion, dynamic scaling, dead-host
recovery, status snapshot). Signal handlers only record the signal number.
"""
from __future__ import annotations

import logging
import os
import queue
import select
import signal
import socket
import time
from dataclasses import dataclass, field

from . import (
    __version__,
    forkfds,
    logs,
    orphans,
    redisprobe,
    reloading,
    scaling,
    sdnotify,
    tracking_v1,
    worker,
)
from .broker import Broker, Brokers
from .config import Config, JobConfig, RedisConfig
from .embedded import EmbeddedRedis
from .errors import BrokerUnavailable, ControlError, SsjobsError
from .extension import Extension, extension_factories
from .loader import add_consumer_path
from .notify import relay
from .periodic import Scheduler
from .privileges import drop_privileges
from .recovery import Heartbeat, Recovery
from .runtime import (
    ReadyPipe,
    RuntimeFiles,
    is_process,
    new_nonce,
    send_signal,
    set_title,
    wait_pids_gone,
)
from .scoreboard import BUSY, IDLE, BatchPosition, Scoreboard
from .text import plural

log = logging.getLogger("ssjobs.master")

LOOP_WAIT_S = 0.25           # longest the loop sleeps; bounds reaction to slot changes
HOUSEKEEPING_EVERY_S = scaling.MASTER_TICK_S  # Redis heartbeat, promotion, scaling, ticks
JANITOR_EVERY_S = 5.0        # dead-host recovery and status snapshot
TIMEOUT_GRACE_S = 5.0        # hard kill this long after job_timeout (the soft timeout fires first)
HUNG_AFTER_S = 60.0          # an idle worker whose heartbeat is this old is hung
READY_TIMEOUT_S = 30.0       # start-up waits this long for the first workers to go idle
MIN_SLOTS = 256
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                   signal.SIGCHLD, signal.SIGQUIT)
# A worker as the heartbeat summary describes it (ssjobs.web shows other hosts' workers).
SUMMARY_WORKER_FIELDS = ("pid", "topic", "kind", "state", "job_id", "job_started_at",
                         "rss_bytes", "processed")
CLEAN_EXITS = {worker.EXIT_OK: "stopped", worker.EXIT_RECYCLE_COUNT: "recycle-count",
               worker.EXIT_RECYCLE_TIME: "recycle-time",
               worker.EXIT_RECYCLE_MEMORY: "recycle-memory", worker.EXIT_IDLE: "idle",
               worker.EXIT_ORPHANED: "orphaned"}


@dataclass
class WorkerProc:
    pid: int
    topic: str
    kind: int                 # 0 static, 1 dynamic
    index: int
    slot: int
    name: str
    broker: Broker
    job: JobConfig
    started: float = field(default_factory=time.monotonic)
    generation: int = 0
    term_sent_at: float | None = None
    kill_reason: str = ""


@dataclass
class TopicState:
    job: JobConfig
    broker: Broker
    crashes: int = 0          # quick crashes in a row
    next_spawn_at: float = 0.0
    dynamic_want: int = 0
    backlog: int = 0
    startup_failures: int = 0  # workers that exited before their consumer was ready


class Master:
    def __init__(self, cfg: Config, ready_fd: int | None = None) -> None:
        self.cfg = cfg
        self.files = RuntimeFiles(cfg.process.data_dir)
        if ready_fd is not None:
            forkfds.close_on_exec(ready_fd)  # handed to us inheritable; no worker may keep it
        self.ready = ReadyPipe.writer(ready_fd)
        self.pid = os.getpid()
        # one incarnation: the nonce tells this master from an earlier one with the same pid
        self.node = f"{socket.gethostname()}:{self.pid}:{new_nonce()}"
        self.serial = 0  # forks so far: part of each worker's name
        self.started_at = time.time()
        self.workers: dict[int, WorkerProc] = {}
        self.topics: dict[str, TopicState] = {}
        self.brokers = Brokers(socket_timeout=5.0)
        self.clients = self.brokers.clients   # url -> client, shared by every part
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.stopping = False
        self.generation = 0
        self.retire: list[int] = []
        self.restarts: dict[str, int] = {}
        self.outage = logs.OutageLogger(log)
        self.recovery = Recovery(self.outage)
        self.heartbeat: Heartbeat = None  # type: ignore[assignment]  # set by _start
        self._wake_r = self._wake_w = -1
        self._last_housekeeping = self._last_janitor = self._last_watchdog = 0.0
        self.board: Scoreboard = None  # type: ignore[assignment]  # set by _start
        self.extensions: list[Extension] = []
        self.extension_state: dict[str, str] = {}  # name -> "on" or "off: why" (status)
        self.reloader = reloading.Reloader(self)
        self.orphan_watches: list[orphans.Watch] = []
        self.embedded: EmbeddedRedis | None = None  # url = "embedded": its redis-server
        self.scheduler = Scheduler([], self.started_at)

    # -- start-up ------------------------------------------------------------------------
    def serve(self) -> int:
        try:
            self.files.ensure_dir()
        except Exception as exc:
            self.ready.report(False, str(exc))
            return 1
        if not self.files.acquire_lock():
            pid = self.files.read_pid()
            self.ready.report(False, f"already running (pid {pid})")
            return 1
        self.previous_node = self.files.swap_lock_owner(self.node)
        try:
            self._start()
        except SsjobsError as exc:  # the environment said no (Redis password, workdir ...)
            log.error("master failed to start: %s", exc)
            self.ready.report(False, str(exc))
            self._cleanup_files()
            return 1
        except Exception as exc:
            log.exception("master failed to start")
            self.ready.report(False, str(exc))
            self._cleanup_files()
            return 1
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _start(self) -> None:
        cfg = self.cfg
        sdnotify.claim()
        logs.setup_logging(cfg.log.dir, level=cfg.log.level, fmt=cfg.log.format, role="master",
                           rotate=cfg.log.rotate, keep=cfg.log.keep,
                           handler_class=cfg.log.handler_class, capture_root=True)
        self._enter_workdir(cfg)
        logging.getLogger("redis").setLevel(logging.WARNING)  # its debug chatter is not ours
        previous = self.files.previous_scoreboard()  # what a SIGKILLed predecessor left
        for fixed in self.files.repair():
            log.warning("data_dir repaired: %s", fixed)
        self.files.write_pid(self.pid)
        set_title(f"{cfg.process.name}: master")
        drop_privileges(cfg.process.user, self.files.dir, cfg.log.dir)
        self._start_embedded_redis(cfg)
        add_consumer_path(cfg.process.consumer_path)
        self.board = Scoreboard.create(self.files.scoreboard_path, self._slots_needed(cfg))
        for job in cfg.jobs:
            self.topics[job.topic] = TopicState(job, self._broker(job))
        self.orphan_watches = orphans.watches(cfg, self.clients)
        self.schedule_periodic()
        self._install_signals()
        redis_down = redisprobe.check_at_start(cfg, log)
        self.heartbeat = Heartbeat(self.clients.values(), cfg.redis.prefix, self.node,
                                   cfg.process.heartbeat_ttl, self.heartbeat_summary,
                                   self.outage)
        self.heartbeat.beat()
        self.publish_topic_settings()
        self._convert_old_records()
        if self.previous_node and self.previous_node != self.node:
            self._recover_previous_master(self.previous_node, previous)
        log.info("master started (pid %d, %s, node %s)", self.pid,
                 plural(len(self.topics), "topic"), self.node)
        self._prepare_relay(cfg)
        self._manage_workers()
        self._start_extensions()  # before "ready": metrics and alerts are up when start returns
        self._wait_ready(wait_for_workers=redis_down is None)

    def _start_embedded_redis(self, cfg: Config) -> None:
        """url = "embedded": the first child, before anything uses Redis; started as the
        service user (restarts from the loop could be nothing else: ssjobs.embedded)."""
        self.embedded = EmbeddedRedis.for_config(cfg)
        if self.embedded is not None:
            self.embedded.start()

    @staticmethod
    def _prepare_relay(cfg: Config) -> None:
        """Open the workers' ERROR-line channel before forking any worker that will use it:
        every worker inherits its end (ssjobs.notify.relay)."""
        if cfg.notifier is not None and cfg.notifier.log_notify:
            relay.prepare_channel()

    # -- start-up: working directory, Redis (see docs/deploy.md) ------------------------
    @staticmethod
    def _enter_workdir(cfg: Config) -> None:
        """Workers run in process.workdir (default: the config file's directory), not
        wherever `start` was typed; relative paths in consumers resolve there."""
        try:
            os.chdir(cfg.workdir)
        except OSError as exc:
            raise ControlError(f"process.workdir {cfg.workdir}: {exc.strerror}") from None

    # -- extensions: metrics, alerts ... (each optional, none may take the master down) ----
    def _start_extensions(self) -> None:
        """Start each extension; one that cannot start is off, with one ERROR line (its
        settings were checked with the config: what fails here is the environment, a busy
        port, a user's notifier class) and status says so."""
        self.extensions, self.extension_state = [], {}
        for name, factory in extension_factories(self.cfg):
            try:
                ext = factory(self)
                ext.start(self)
            except Exception as exc:  # noqa: BLE001 - an extension never takes the master down
                log.error("%s off: %s", name, exc)
                self.extension_state[name] = f"off: {exc}"
                continue
            self.extensions.append(ext)
            self.extension_state[name] = "on"

    def _call_extensions(self, method: str, *args: object) -> None:
        for ext in list(self.extensions):
            try:
                getattr(ext, method)(self, *args)
            except Exception:
                log.exception("%s.%s failed", type(ext).__name__, method)

    def _slots_needed(self, cfg: Config) -> int:
        # Room for every worker twice over, so a reload can overlap old and new workers.
        return max(MIN_SLOTS, 2 * sum(j.static_workers + j.dynamic_workers for j in cfg.jobs))

    def topic_state(self, job: JobConfig, rcfg: RedisConfig | None = None) -> TopicState:
        """Fresh state of a topic the master starts serving (a reload may add one)."""
        return TopicState(job, self._broker(job, rcfg))

    def _broker(self, job: JobConfig, rcfg: RedisConfig | None = None) -> Broker:
        return self.brokers.broker(rcfg or self.cfg.redis_for(job), job.topic,
                                   worker.rules_of(job))

    def schedule_periodic(self) -> None:
        """The ``[[periodic]]`` entries of the current config (at start and each reload; what
        was enqueued already is in Redis, so a new scheduler never repeats a tick)."""
        self.scheduler = Scheduler(
            [(p, self.topics[p.topic].broker) for p in self.cfg.periodic], time.time())

    def publish_topic_settings(self) -> None:
        """What producers' pushes read of each topic (whether to record its jobs): at start,
        on reload and with the janitor (a flushed Redis gets it back within seconds)."""
        try:
            for ts in self.topics.values():
                ts.broker.publish_conf(ts.job.track, ts.job.result_ttl)
        except BrokerUnavailable as exc:
            self.outage.note_failure("redis", exc)

    def _convert_old_records(self) -> None:
        """Tracked topics: records of the first layout converted, once per topic
        (docs/protocol.md, "Job records")."""
        for ts in self.topics.values():
            if not ts.job.track:
                continue
            try:
                converted = tracking_v1.convert_old_records(ts.broker.client, ts.broker.keys,
                                                         ts.job.result_ttl)
            except BrokerUnavailable as exc:
                self.outage.note_failure("redis", exc)
                return
            if converted:
                log.info("topic %r: %s of the first layout converted", ts.job.topic,
                         plural(converted, "job record"))

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, lambda signum, _frame: self.signals.put_nowait(signum))

    def _wait_ready(self, wait_for_workers: bool = True) -> None:
        """Report ready once every worker has imported its consumer (or the wait timed out;
        at once while Redis is down: workers need it to get ready)."""
        deadline = time.monotonic() + (READY_TIMEOUT_S if wait_for_workers else 0.0)
        while time.monotonic() < deadline and not self.stopping:
            self._reap_workers()
            failed = [t for t, ts in self.topics.items() if ts.startup_failures]
            if failed:
                msg = f"workers of {', '.join(map(repr, failed))} exit at start-up (see log)"
                self.ready.report(False, msg)
                raise RuntimeError(msg)
            states = [self.board.slot(w.slot).state for w in self.workers.values()]
            if all(s in (IDLE, BUSY) for s in states):
                break
            self._wait(0.05)
            self.heartbeat.beat_if_due()
        self._write_snapshot()
        self.ready.report(True, str(self.pid) if wait_for_workers else
                          f"{self.pid} waiting for redis")
        sdnotify.notify(f"READY=1\nMAINPID={self.pid}")

    def _recover_previous_master(self, old_node: str, board: Scoreboard | None) -> None:
        """A SIGKILLed master's workers finish their job and exit; then requeue what they
        held, with each one's position in its batch from the scoreboard it left."""
        positions: dict[str, tuple[str, BatchPosition]] = {}
        if board is not None:
            leftovers = [w["pid"] for w in board.workers()
                         if is_process(w["pid"], w["started_at"])]
            alive = wait_pids_gone(leftovers, self.cfg.process.stop_timeout,
                                   while_waiting=self.heartbeat.beat_if_due)
            for pid in alive:
                log.warning("leftover worker %d of the previous master still alive: killing",
                            pid)
                send_signal(pid, signal.SIGKILL)
            wait_pids_gone(alive, 5.0)
            for i in range(board.nslots):
                slot = board.slot(i)
                if slot.pid:
                    name = f"{old_node}/{slot.pid}-{slot.serial}"
                    positions[name] = (slot.read()["topic"], slot.batch())
            board.close()
        self.recovery.previous_master(self.topics, old_node, positions)

    # -- the loop ------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopping:
            self._wait(LOOP_WAIT_S)
            self._handle_signals()
            self._reap_workers()
            self.reloader.advance()
            self._murder_workers()
            if self.embedded is not None:
                self.embedded.tend()  # restart a redis-server that died, once due
            self._manage_workers()
            self._housekeeping()
            self._ping_watchdog()

    def _ping_watchdog(self) -> None:
        """systemd WatchdogSec: a loop that stops turning stops these pings."""
        every = sdnotify.watchdog_interval()
        mono = time.monotonic()
        if every is not None and mono - self._last_watchdog >= every:
            self._last_watchdog = mono
            sdnotify.notify("WATCHDOG=1")

    def _wait(self, timeout: float) -> None:
        try:
            select.select([self._wake_r], [], [], timeout)
        except InterruptedError:
            pass
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _handle_signals(self) -> None:
        while True:
            try:
                signum = self.signals.get_nowait()
            except queue.Empty:
                return
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                log.info("received %s: stopping gracefully", signal.Signals(signum).name)
                self.stopping = True
            elif signum == signal.SIGHUP:
                self.reloader.begin()
            elif signum == signal.SIGUSR1:
                logs.reopen_logs()
                self._signal_all(signal.SIGUSR1)

    def _reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._on_child_exit(pid, status)

    def _on_child_exit(self, pid: int, status: int) -> None:
        """A reaped child: a worker, or the embedded redis-server (never a worker)."""
        if pid in self.workers:
            self._on_worker_exit(self.workers.pop(pid), status)
        elif self.embedded is not None:
            self.embedded.reaped(pid, status)

    def _on_worker_exit(self, proc: WorkerProc, status: int) -> None:
        slot = self.board.slot(proc.slot)
        info = slot.read()
        position = slot.batch()
        self._call_extensions("worker_exited", proc.slot, info)  # its final counts, read once
        slot.release()
        lifetime = time.monotonic() - proc.started
        code = os.waitstatus_to_exitcode(status)
        clean = code in CLEAN_EXITS
        reason = proc.kill_reason or CLEAN_EXITS.get(code) or (
            f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}")
        restart_kind = proc.kill_reason or (CLEAN_EXITS[code] if clean else "crash")
        self.restarts[restart_kind] = self.restarts.get(restart_kind, 0) + 1
        level = logging.INFO if clean else logging.ERROR
        charged = info["job_id"] if position.running and not clean else ""
        log.log(level, "worker %s #%d (pid %d) exited: %s%s", proc.topic, proc.index, proc.pid,
                reason, f"; job {charged} charged one attempt" if charged else "")
        self.recovery.worker_died(proc.broker, proc.name, position, proc.job.max_retries,
                                  f"{proc.topic} #{proc.index} (pid {proc.pid})")
        if self.reloader.canary_exited(proc.pid, code, reason):
            return  # a reload's canary: it refuses that reload, it is no crash of the topic
        ts = self.topics.get(proc.topic)
        if ts is None or self.stopping:
            return
        if info["state"] == "starting" and not clean:
            ts.startup_failures += 1
        quick = scaling.is_quick_crash(lifetime, clean, info["processed"])
        if code == worker.EXIT_CONSUMER_IMPORT or quick:
            ts.crashes += 1
            delay = scaling.crash_backoff(ts.crashes)
            ts.next_spawn_at = time.monotonic() + delay
            if ts.crashes >= scaling.CRASH_LOOP_AT:
                log.error("topic %r is crash-looping (%d quick exits in a row, last: %s); "
                          "next restart in %.1fs", proc.topic, ts.crashes, reason, delay)
        elif clean or lifetime >= scaling.HEALTHY_LIFETIME_S:
            ts.crashes = 0

    def _murder_workers(self) -> None:
        now, mono = time.time(), time.monotonic()
        for proc in list(self.workers.values()):
            slot = self.board.slot(proc.slot)
            state = slot.state
            if proc.term_sent_at is not None:
                if mono - proc.term_sent_at > self.cfg.process.stop_timeout:
                    self._kill(proc, "stop-timeout")
                continue
            timeout = slot.timeout_of_job(proc.job.job_timeout)  # a job may bring its own
            started = slot.job_started_at  # the consumer cannot clear it: see _fastloop_py
            if timeout and state == BUSY and started and now - started > timeout + TIMEOUT_GRACE_S:
                log.error("worker %s #%d (pid %d): job ran past job_timeout=%ss; killing it",
                          proc.topic, proc.index, proc.pid, timeout)
                self._kill(proc, "timeout")
            elif state == IDLE and now - slot.heartbeat > HUNG_AFTER_S:
                log.error("worker %s #%d (pid %d) is hung (no heartbeat for %ds); killing it",
                          proc.topic, proc.index, proc.pid, HUNG_AFTER_S)
                self._kill(proc, "hung")

    def _kill(self, proc: WorkerProc, reason: str) -> None:
        proc.kill_reason = proc.kill_reason or reason
        send_signal(proc.pid, signal.SIGKILL)

    def _terminate(self, proc: WorkerProc) -> None:
        if proc.term_sent_at is None:
            proc.term_sent_at = time.monotonic()
            send_signal(proc.pid, signal.SIGTERM)

    def _manage_workers(self) -> None:
        if self.stopping:
            return
        self._retire_next()
        now = time.monotonic()
        for topic, ts in self.topics.items():
            mine = [w for w in self.workers.values() if w.topic == topic]
            if now < ts.next_spawn_at:
                continue
            taken = {w.index for w in mine if w.kind == 0}
            missing = [i for i in range(1, ts.job.static_workers + 1) if i not in taken]
            if ts.crashes and missing:
                missing = missing[:1]  # while crash-looping, one at a time
            for index in missing:
                self._spawn(ts, 0, index)
            dynamic = [w for w in mine if w.kind == 1 and w.term_sent_at is None]
            used = {w.index for w in mine if w.kind == 1}
            for _ in range(ts.dynamic_want - len(dynamic)):
                index = next(i for i in range(ts.job.static_workers + 1, 10_000)
                             if i not in used)
                used.add(index)
                self._spawn(ts, 1, index)

    def _retire_next(self) -> None:
        """After a reload, replace old workers one at a time."""
        while self.retire:
            proc = self.workers.get(self.retire[0])
            if proc is None:
                self.retire.pop(0)
                continue
            self._terminate(proc)
            return

    def _spawn(self, ts: TopicState, kind: int, index: int, *, job: JobConfig | None = None,
               rcfg: RedisConfig | None = None, errors_fd: int = -1) -> int | None:
        """Fork a worker of ``ts`` (with ``job``/``rcfg``: a reload's canary, under the new
        config, sending its ERROR lines to ``errors_fd``); its pid, None without a slot."""
        slot_index = self._free_slot()
        if slot_index is None:
            log.error("scoreboard full: cannot start another worker for %r", ts.job.topic)
            return None
        broker = ts.broker if job is None else self._broker(job, rcfg)
        job = job or ts.job
        slot = self.board.slot(slot_index)
        self.serial += 1
        slot.claim(0, job.topic, kind, index, time.time(), self.serial)
        ident = worker.WorkerIdentity(self.node, kind, index, self.pid, self.serial)
        title = f"{self.cfg.process.name}: worker {job.topic} #{index}"
        rcfg = rcfg or self.cfg.redis_for(job)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                if errors_fd >= 0:
                    reloading.forward_errors(errors_fd)
                code = worker.run_forked(job, rcfg.url, rcfg.prefix, slot, ident, title,
                                         close_fds=self._inherited_fds())
            except BaseException:
                log.exception("worker crashed")
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        slot.set_pid(pid)
        self.workers[pid] = WorkerProc(pid, job.topic, kind, index, slot_index,
                                       f"{self.node}/{pid}-{self.serial}", broker, job,
                                       generation=self.generation)
        log.debug("spawned %s worker %s #%d (pid %d)", ("static", "dynamic")[kind], job.topic,
                  index, pid)
        return pid

    def _inherited_fds(self) -> tuple[int, ...]:
        """What the forked worker closes at once: every fd that is the master's own (see
        ssjobs.forkfds); the log file and the scoreboard stay, the worker uses them."""
        from .status import cached_clients

        fds = [self._wake_r, self._wake_w, self.ready.write_fd]
        if self.files.lock_fd is not None:
            fds.append(self.files.lock_fd)
        fds += forkfds.redis_fds([*self.clients.values(), *cached_clients()])
        fds += self.reloader.fds()
        for ext in self.extensions:
            fds += ext.fds()
        return tuple(fd for fd in fds if fd >= 0)

    def _free_slot(self) -> int | None:
        used = {w.slot for w in self.workers.values()}
        for i in range(self.board.nslots):
            if i not in used:
                return i
        return None

    # -- once a second -------------------------------------------------------------------
    def _housekeeping(self) -> None:
        mono = time.monotonic()
        if mono - self._last_housekeeping < HOUSEKEEPING_EVERY_S:
            return
        self._last_housekeeping = mono
        now = time.time()
        self.board.master_beat(now)
        self.heartbeat.beat()
        try:
            self._redis_housekeeping(now)
            for watch in self.orphan_watches:
                watch.step()  # one SCAN call: ready lists of topics nobody serves
            if mono - self._last_janitor >= JANITOR_EVERY_S:
                self._last_janitor = mono
                self.recovery.dead_hosts(self.clients.values(), list(self.topics.values()),
                                         self.cfg.redis.prefix, self.node)
                self.publish_topic_settings()
            self.outage.note_success("redis")
        except BrokerUnavailable as exc:
            self.outage.note_failure("redis", exc)
        if mono - self._last_janitor < HOUSEKEEPING_EVERY_S:
            self._write_snapshot()
        if logs.rotate_if_due() is not None:
            self._signal_all(signal.SIGUSR1)
        self._call_extensions("tick", now)

    def _redis_housekeeping(self, now: float) -> None:
        self.recovery.retry_pending()
        self.scheduler.tick(now)
        for ts in self.topics.values():
            ts.broker.promote(now)
            ts.backlog = ts.broker.backlog()
            dynamic = sum(1 for w in self.workers.values()
                          if w.topic == ts.job.topic and w.kind == 1 and w.term_sent_at is None)
            ts.dynamic_want = scaling.dynamic_target(ts.backlog, ts.job.queue_health_size,
                                                     dynamic, ts.job.dynamic_workers)

    def _write_snapshot(self, running: bool = True) -> None:
        try:
            from .status import collect_status
            snap = collect_status(self.cfg, self.files, running_pid=self.pid if running else None,
                                  master_info=self.master_info())
            snap["running"] = running
            self.files.write_snapshot(snap)
        except Exception as exc:  # a snapshot must never take the master down
            log.debug("status snapshot failed: %s", exc)

    def master_info(self) -> dict:
        return {"pid": self.pid, "started_at": self.started_at, "node": self.node,
                "version": __version__, "restarts": dict(self.restarts),
                "extensions": dict(self.extension_state),
                "orphan_topics": self.orphan_topics,
                "periodic": self.scheduler.view(time.time())}

    def heartbeat_summary(self) -> dict:
        """What this master's heartbeat key carries (docs/web.md): ``master_info()``, the
        host name and this host's workers, compactly, so the dashboard of any host shows
        every host's workers."""
        workers = [{k: w[k] for k in SUMMARY_WORKER_FIELDS} for w in self.board.workers()]
        return {**self.master_info(), "host": socket.gethostname(), "workers": workers}

    @property
    def orphan_topics(self) -> dict[str, int]:
        """Topics with jobs in ready that no config here declares and no worker serves."""
        return orphans.merged(self.orphan_watches)

    # -- reload and stop: reload is a canary, see ssjobs.reloading --------------------------
    def _signal_all(self, sig: int) -> None:
        for pid in list(self.workers):
            send_signal(pid, sig)

    def _shutdown(self) -> None:
        self.stopping = True
        sdnotify.notify("STOPPING=1")
        for proc in self.workers.values():
            self._terminate(proc)
        deadline = time.monotonic() + self.cfg.process.stop_timeout
        while self.workers and time.monotonic() < deadline:
            self._wait(0.05)
            self._reap_workers()
            self.heartbeat.beat_if_due()  # a long stop is not a dead host
            if self.embedded is not None:
                self.embedded.tend()  # the stopping workers settle through it
        for proc in list(self.workers.values()):
            log.warning("worker %s #%d (pid %d) did not stop within %ss: killing it",
                        proc.topic, proc.index, proc.pid, self.cfg.process.stop_timeout)
            self._kill(proc, "stop-timeout")
        while self.workers:
            pid, status = os.waitpid(-1, 0)
            self._on_child_exit(pid, status)
        self.recovery.flush(while_waiting=self._beat_and_tend)
        self._call_extensions("stop")
        self.extensions = []
        self.heartbeat.end()
        self._write_snapshot(running=False)
        log.info("master stopped")
        self._cleanup_files()

    def _beat_and_tend(self) -> None:
        self.heartbeat.beat_if_due()
        if self.embedded is not None:
            self.embedded.tend()

    def _cleanup_files(self) -> None:
        if self.embedded is not None:  # the very last user of Redis is gone: stop it
            self.embedded.stop()
        if self.board is not None:
            self.board.close()
            self.files.remove(self.files.scoreboard_path)
        self.files.remove(self.files.pid_path)
        self.files.release_lock()



def serve(cfg: Config, *, ready_fd: int | None = None) -> int:
    """Run the master in this process until it is stopped (see module docstring)."""
    return Master(cfg, ready_fd).serve()


__all__ = ["Master", "serve"]
