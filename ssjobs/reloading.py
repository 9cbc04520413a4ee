"""Reload as a canary: new code must prove itself before it replaces healthy workers.

On SIGHUP the master reads the config again and starts ONE new worker per topic with it
(the canary) next to the running ones. A canary that imports its consumer and runs its
``setup()`` (it reaches ``idle``) lets the reload go ahead for its topic: the old workers
are then replaced one by one. A canary that exits first, or is not ready within
``CANARY_TIMEOUT_S``, refuses the reload for its topic only: that topic keeps its old
workers, code and settings, and the refusal is logged at ERROR, alerted (``reload_refused``)
and reported to the ``ssjobs reload`` command, which exits 1 with the reason.

The reason comes from the canary itself: right after fork it sends the first line of each
ERROR it logs through a pipe (:func:`forward_errors`), so the master can quote the import
error without importing consumer code. The outcome is written to ``reload.json`` in
data_dir, where the ``reload`` command waits for it (:func:`wait_result`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import logs, orphans, sdnotify
from .config import Config, ConfigError, JobConfig, load_config
from .loader import add_consumer_path
from .runtime import pid_alive, write_atomic
from .scoreboard import BUSY, IDLE
from .text import plural

if TYPE_CHECKING:
    from .master import Master

log = logging.getLogger("ssjobs.master")

CANARY_TIMEOUT_S = 30.0  # a new worker gets this long to import its consumer and run setup()
RESULT_WAIT_S = CANARY_TIMEOUT_S + 30.0  # `reload` waits this long for the outcome
RESULT_NAME = "reload.json"
MAX_SAID_CHARS = 500  # of the canary's first ERROR line, quoted in the refusal


@dataclass
class Canary:
    """The one new worker of a topic; ``outcome`` is None while undecided, "" when it got
    ready, else why the reload is refused for its topic."""

    topic: str
    job: JobConfig
    pid: int = 0
    errors_fd: int = -1          # read end of the pipe its ERROR lines come through
    outcome: str | None = None
    said: str = ""               # the first ERROR line it logged
    killed: bool = False         # killed for being late: decided when reaped


@dataclass
class Reload:
    """One reload in progress: the new config and a canary per topic."""

    cfg: Config
    started_at: float            # epoch seconds, matched by the waiting `reload` command
    canaries: dict[str, Canary] = field(default_factory=dict)
    deadline: float = field(default_factory=lambda: time.monotonic() + CANARY_TIMEOUT_S)

    def add(self, job: JobConfig) -> tuple[Canary, int]:
        """A canary for ``job`` and the write end of its error pipe (for the child)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        canary = self.canaries[job.topic] = Canary(job.topic, job, errors_fd=read_fd)
        return canary, write_fd

    def undecided(self) -> list[Canary]:
        return [c for c in self.canaries.values() if c.outcome is None]

    def by_pid(self, pid: int) -> Canary | None:
        return next((c for c in self.canaries.values() if c.pid == pid), None)

    def fds(self) -> list[int]:
        """The master's read ends (a forked worker must not keep them)."""
        return [c.errors_fd for c in self.canaries.values() if c.errors_fd >= 0]

    def read_errors(self) -> None:
        """Keep the first ERROR line each undecided canary sent (non-blocking)."""
        for canary in self.undecided():
            if canary.errors_fd < 0 or canary.said:
                continue
            try:
                data = os.read(canary.errors_fd, 65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            lines = [line for line in data.decode(errors="replace").splitlines() if line]
            if lines:
                canary.said = lines[0]

    def decide(self, canary: Canary, outcome: str) -> None:
        self.read_errors()
        canary.outcome = outcome if not outcome or not canary.said else \
            f"{outcome}: {canary.said}"
        if canary.errors_fd >= 0:
            os.close(canary.errors_fd)
            canary.errors_fd = -1

    def close(self) -> None:
        for canary in self.canaries.values():
            if canary.errors_fd >= 0:
                os.close(canary.errors_fd)
                canary.errors_fd = -1

    def refused(self) -> dict[str, str]:
        return {t: c.outcome for t, c in self.canaries.items() if c.outcome}

    def accepted(self) -> dict[str, Canary]:
        return {t: c for t, c in self.canaries.items() if c.outcome == ""}


def exit_reason(code: int, reason: str) -> str:
    """Why a canary that exited refuses the reload, from its exit status."""
    from .worker import EXIT_CONSUMER_IMPORT, EXIT_SETUP_FAILED

    if code == EXIT_CONSUMER_IMPORT:
        return "the new worker cannot import its consumer"
    if code == EXIT_SETUP_FAILED:
        return "the new worker's setup() failed"
    return f"the new worker exited at start-up ({reason})"


# -- the master's steps ----------------------------------------------------------------------

def _embedded_server(cfg: Config) -> tuple[str, int] | None:
    """What identifies the embedded redis-server a config asks for (None: none)."""
    rcfg = cfg.embedded_redis
    return None if rcfg is None else (rcfg.url, rcfg.embedded_port)


class Reloader:
    """The master's reload: :meth:`begin` on SIGHUP, :meth:`advance` every loop round,
    :meth:`canary_exited` from the reaper; see the module doc."""

    def __init__(self, master: Master) -> None:
        self.m = master
        self.current: Reload | None = None
        self.again = False  # a SIGHUP came during a reload: one more follows it

    def fds(self) -> list[int]:
        return self.current.fds() if self.current is not None else []

    def begin(self) -> None:
        """Read the config again and start one canary per topic (or refuse it all)."""
        m = self.m
        if self.current is not None:
            self.again = True
            log.info("reload requested during a reload: it follows this one")
            return
        started = time.time()
        try:
            new = load_config(m.cfg.path)
        except ConfigError as exc:
            return self._refuse_all(started, f"keeping the running config: {exc}")
        if _embedded_server(new) != _embedded_server(m.cfg):
            return self._refuse_all(started, 'redis "embedded" is started and stopped with '
                                    "the master, and this reload changes it; restart instead")
        if m._slots_needed(new) > m.board.nslots:
            return self._refuse_all(started, "it needs more worker slots than this master has "
                                    f"({m.board.nslots}); restart instead")
        try:
            os.chdir(new.workdir)  # canaries and the workers after them run there
        except OSError as exc:
            return self._refuse_all(started, f"process.workdir {new.workdir}: {exc.strerror}")
        sdnotify.notify("RELOADING=1")
        add_consumer_path(new.process.consumer_path)
        m._prepare_relay(new)  # a reload may turn log_notify on: canaries need the channel
        plan = self.current = Reload(new, started)
        for job in new.jobs:
            canary, write_fd = plan.add(job)
            ts = m.topics.get(job.topic) or m.topic_state(job, new.redis_for(job))
            try:
                pid = m._spawn(ts, 0, 1, job=job, rcfg=new.redis_for(job), errors_fd=write_fd)
            finally:
                os.close(write_fd)
            if pid is None:
                plan.decide(canary, "no free worker slot for a new worker")
            else:
                canary.pid = pid
        log.info("reloading: started a new worker per topic (%d) to try the new config",
                 len(plan.canaries))

    def _refuse_all(self, started: float, why: str) -> None:
        log.error("reload refused, %s", why)
        write_result(self.m.files.dir, result(started, error=why))

    def advance(self) -> None:
        """Decide the canaries that are ready or late; apply once all are decided."""
        m, plan = self.m, self.current
        if plan is None:
            return
        plan.read_errors()
        for canary in plan.undecided():
            proc = m.workers.get(canary.pid)
            if proc is None:
                continue  # reaped: canary_exited decided it
            if m.board.slot(proc.slot).state in (IDLE, BUSY):
                plan.decide(canary, "")
            elif time.monotonic() > plan.deadline and not canary.killed:
                canary.killed = True  # decided when reaped
                m._kill(proc, "canary-timeout")
        if plan.undecided():
            return
        self.current = None
        plan.close()
        self.apply(plan)
        if self.again:
            self.again = False
            self.begin()

    def canary_exited(self, pid: int, code: int, reason: str) -> bool:
        """True when ``pid`` was an undecided canary (its exit refuses its topic)."""
        plan = self.current
        canary = plan.by_pid(pid) if plan is not None else None
        if plan is None or canary is None or canary.outcome is not None:
            return False
        plan.decide(canary, f"the new worker was not ready within {CANARY_TIMEOUT_S:.0f} s"
                    if canary.killed else exit_reason(code, reason))
        return True

    def apply(self, plan: Reload) -> None:
        """The new config for the topics whose canary got ready; the others keep theirs."""
        m = self.m
        refused, accepted = plan.refused(), plan.accepted()
        old_jobs = {job.topic: job for job in m.cfg.jobs}
        jobs = [job if job.topic not in refused else old_jobs[job.topic]
                for job in plan.cfg.jobs if job.topic not in refused or job.topic in old_jobs]
        m.cfg = dataclasses.replace(plan.cfg, jobs=tuple(jobs))
        m.generation += 1
        old_topics, m.topics = m.topics, {}
        for job in m.cfg.jobs:
            ts = old_topics.get(job.topic)
            if ts is not None and job.topic in refused:
                m.topics[job.topic] = ts  # untouched: same workers, code and settings
            elif ts is not None and m.cfg.redis_for(job).url in m.clients:
                ts.job, ts.broker, ts.crashes = job, m._broker(job), 0
                m.topics[job.topic] = ts
            else:
                m.topics[job.topic] = m.topic_state(job)
        m.orphan_watches = orphans.watches(m.cfg, m.clients)
        m.schedule_periodic()
        m.publish_topic_settings()
        canaries = {c.pid for c in accepted.values()}
        for pid in canaries:
            if (proc := m.workers.get(pid)) is not None:
                proc.generation, proc.broker = m.generation, m.topics[proc.topic].broker
        removed = [p for p in m.workers.values() if p.topic not in m.topics]
        for proc in removed:
            m._terminate(proc)
        m.retire = [p.pid for p in m.workers.values()
                    if p.topic in m.topics and p.topic not in refused and p.pid not in canaries
                    and p.term_sent_at is None]
        log.info("reloaded config: %s, replacing %s one by one, stopping %d",
                 plural(len(m.topics), "topic"), plural(len(m.retire), "worker"), len(removed))
        for topic, why in refused.items():
            kept = "keeps its workers, code and settings" if topic in old_topics else \
                "is not added"
            log.error("reload refused for topic %r: %s; the topic %s", topic, why, kept)
        m._call_extensions("stop")
        m._start_extensions()
        m._call_extensions("reloaded", refused)
        write_result(m.files.dir, result(plan.started_at, topics=len(m.topics),
                                         replaced=len(m.retire), stopped=len(removed),
                                         refused=refused))
        m._write_snapshot()
        sdnotify.notify("READY=1")


# -- in the forked canary --------------------------------------------------------------------

def forward_errors(fd: int) -> None:
    """In a canary right after fork: also send the first line of each ERROR it logs to
    ``fd``. Never blocks; stops for good once the master closed its end."""
    os.set_blocking(fd, False)
    state = {"fd": fd}

    def sink(record: dict[str, Any]) -> None:
        if state["fd"] < 0:
            return
        line = (str(record.get("msg") or "").splitlines() or [""])[0][:MAX_SAID_CHARS]
        try:
            os.write(state["fd"], (line + "\n").encode("utf-8", "replace"))
        except BlockingIOError:
            pass  # the master has what it needs: it reads the first line only
        except OSError:  # the master decided and closed its end
            os.close(state["fd"])
            state["fd"] = -1

    logs.add_error_sink(sink)


# -- the outcome, for the `reload` command --------------------------------------------------

def write_result(data_dir: Path, result: dict[str, Any]) -> None:
    try:
        write_atomic(Path(data_dir) / RESULT_NAME, json.dumps(result).encode(), mode=0o644)
    except OSError:
        pass  # the command then times out; the log has the outcome


def result(started_at: float, *, topics: int = 0, replaced: int = 0, stopped: int = 0,
           refused: dict[str, str] | None = None, error: str = "") -> dict[str, Any]:
    return {"started_at": started_at, "finished_at": time.time(), "topics": topics,
            "replaced": replaced, "stopped": stopped, "refused": refused or {},
            "error": error}


def read_result(data_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(data_dir) / RESULT_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def wait_result(data_dir: Path, since: float, master_pid: int,
                timeout: float = RESULT_WAIT_S) -> dict[str, Any] | None:
    """The outcome of the first reload the master began at or after ``since`` (epoch s);
    None when the master went away or said nothing within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(master_pid):
        found = read_result(data_dir)
        if found and float(found.get("started_at") or 0) >= since:
            return found
        time.sleep(0.1)
    return None
