"""Job-monitoring alerts and the master's notifier (``[notifier]``).

The rules are pure: numbers and a monotonic clock in, :class:`Alert` values out; they are
table-tested without a master. :class:`AlertsExtension` is the effectful part the master
runs: it reads the numbers the master already has (backlog, crash streaks, the scoreboard,
one pipelined read of the dead-letter counts), de-duplicates each alert across the fleet
with ``SET {prefix}:alert:{rule}:{topic} NX PX``, and queues it on an AsyncSender, so
the master's thread never waits on HTTP. With ``log_notify`` it also relays ERROR lines
of the master and of every worker (see :mod:`ssjobs.notify.relay`) to the same sender.

Rules (the ``alert`` field of a webhook body):

- ``backlog``: ready backlog above ``queue_health_size`` for ``alert_after`` seconds;
  a "recovered" message when it clears.
- ``dead_letters``: the dead-letter list grew; at most one alert per ``repeat_interval``,
  with how many were added meanwhile.
- ``crash_loop``: workers keep crashing right after start (``scaling.CRASH_LOOP_AT`` in a row).
- ``consumer_import``: workers exit before their consumer is ready (it cannot be imported,
  or its ``setup()`` fails).
- ``redis_down``: the master cannot reach Redis for ``alert_after`` seconds (this host only:
  Redis cannot de-duplicate it).
- ``stuck_job``: a job runs past its ``job_timeout`` and ignores the worker's own timeout.
- ``orphan_topic``: jobs wait in the ready list of a topic that no config here declares and
  no worker of any host serves, for ``alert_after`` seconds (a typo in a topic name, a
  producer with another prefix); "recovered" when the list is empty or served.
- ``reload_refused``: a reload's new worker for a topic could not start (its consumer does
  not import, its ``setup()`` fails ...); the topic keeps its running workers (this host).

Every firing alert repeats at most once per ``repeat_interval`` while its condition holds.
"""
from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import logs, scaling
from .broker import Broker, claim
from .errors import BrokerError
from .notify import AsyncSender, error_sink, make_notifier
from .notify.relay import RelayServer
from .notify.relay import report_failure as report_relay_failure
from .scoreboard import BUSY
from .text import plural

if TYPE_CHECKING:
    from .config import NotifierConfig
    from .master import Master

log = logging.getLogger("ssjobs.alerts")

BACKLOG, DEAD_LETTERS, CRASH_LOOP = "backlog", "dead_letters", "crash_loop"
CONSUMER_IMPORT, REDIS_DOWN, STUCK_JOB = "consumer_import", "redis_down", "stuck_job"
RELOAD_REFUSED, ORPHAN_TOPIC = "reload_refused", "orphan_topic"
FIRE, RECOVERED = "fire", "recovered"

# A crash-looping topic crashes at least once per back-off cap plus a short life; quieter
# than that for this long, it has recovered (its crash streak only resets on a clean exit).
QUIET_AFTER_S = scaling.CRASH_BACKOFF_MAX_S + scaling.HEALTHY_LIFETIME_S + 5.0
STUCK_GRACE_S = 2.0  # the worker's own timeout fires within its 1 s tick; past this it failed
MIN_CLAIM_MS = 1000  # a fleet claim outlives one tick, so hosts ticking out of phase send once
STOP_FLUSH_S = 2.0  # at stop, queued messages get this long; a hanging endpoint no longer
HELPER_BLOCKED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                          signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD, signal.SIGALRM}


# -- pure rules -------------------------------------------------------------------------------

@dataclass
class Hold:
    """A condition that fires once it has held for ``after`` seconds, again every ``repeat``
    seconds while it holds, and (if ``recovers``) reports once when it clears after firing."""

    after: float
    repeat: float
    recovers: bool = True
    since: float | None = None      # when it became true
    fired_at: float | None = None   # when it last fired

    def update(self, active: bool, now: float) -> str | None:
        """FIRE, RECOVERED or None for one observation at monotonic time ``now``."""
        if not active:
            fired = self.fired_at is not None
            self.since = self.fired_at = None
            return RECOVERED if fired and self.recovers else None
        if self.since is None:
            self.since = now
        if now - self.since < self.after:
            return None
        if self.fired_at is not None and now - self.fired_at < self.repeat:
            return None
        self.fired_at = now
        return FIRE


@dataclass
class Tally:
    """Rises of counters that should stay flat, reported at most once per ``repeat``.

    Several counters may measure the same thing (a capped list's length and a lifetime
    counter): a tick counts the largest rise among them. A fall (purge) is no rise."""

    repeat: float
    last: tuple[int, ...] | None = None
    pending: int = 0
    sent_at: float | None = None

    def update(self, values: tuple[int, ...], now: float) -> int:
        """How many new ones to report now; 0 for none (or not yet: rate-limited)."""
        if self.last is not None and len(values) == len(self.last):
            self.pending += max(0, *(new - old for new, old in zip(values, self.last, strict=True)))
        self.last = values
        if self.pending and (self.sent_at is None or now - self.sent_at >= self.repeat):
            count, self.pending, self.sent_at = self.pending, 0, now
            return count
        return 0


@dataclass
class Recent:
    """Whether a counter rose during the last ``window`` seconds (the first value seen is
    the baseline, not a rise)."""

    window: float
    last: int | None = None
    rose_at: float | None = None

    def update(self, value: int, now: float) -> bool:
        if self.last is not None and value > self.last:
            self.rose_at = now
        self.last = value
        return self.rose_at is not None and now - self.rose_at < self.window


def stuck_jobs(busy: Iterable[tuple[int, float]], job_timeout: float,
               now: float) -> list[tuple[int, float]]:
    """(worker pid, seconds running) of each busy worker whose job is past ``job_timeout``
    plus the grace its own timeout gets; ``busy`` holds (pid, job started at, epoch s)."""
    if not job_timeout:
        return []
    return [(pid, now - started) for pid, started in busy
            if started and now - started > job_timeout + STUCK_GRACE_S]


@dataclass(frozen=True)
class TopicView:
    """What the master knows about one topic at one tick (None: unknown, Redis is down)."""

    topic: str
    health: int = 0                             # queue_health_size (0: never checked)
    backlog: int | None = None
    dead: tuple[int, int] | None = None         # (dead-letter list length, lifetime count)
    crashes: int = 0                            # quick crashes in a row
    startup_failures: int = 0                   # workers gone before their consumer was ready
    stuck: tuple[tuple[int, str, float], ...] = ()  # (pid, job id, seconds running)
    job_timeout: float = 0
    consumer: str = ""


@dataclass(frozen=True)
class Alert:
    rule: str
    topic: str
    title: str
    text: str
    level: str = "error"
    recovered: bool = False
    fleet: bool = True  # one per condition across the fleet (Redis SET NX), else this host's


class Rules:
    """The alert rules over successive observations; keeps each condition's state."""

    def __init__(self, *, alert_after: float, repeat: float, node: str = "") -> None:
        self.alert_after = alert_after
        self.repeat = repeat
        self.node = node
        self._holds: dict[tuple[str, str], Hold] = {}
        self._tallies: dict[str, Tally] = {}
        self._recent: dict[tuple[str, str], Recent] = {}

    def prime(self, topics: Iterable[TopicView], now: float) -> None:
        """Take the counters as they are now as the baseline (growth before this is old)."""
        for v in topics:
            if v.dead is not None:
                self._tallies.setdefault(v.topic, Tally(self.repeat)).update(v.dead, now)
            self._rose("startup", v.topic, v.startup_failures, now)
            self._rose("crash", v.topic, v.crashes, now)

    def evaluate(self, topics: Iterable[TopicView], redis_down_for: float | None,
                 now: float, orphans: dict[str, int] | None = None) -> list[Alert]:
        """Alerts to send after this observation; ``now`` is monotonic seconds;
        ``orphans``: topic -> jobs waiting, of topics nobody serves (ssjobs.orphans)."""
        alerts: list[Alert] = []
        for view in topics:
            alerts += self._backlog(view, now)
            alerts += self._dead_letters(view, now)
            alerts += self._crashes(view, now)
            alerts += self._stuck(view, now)
        alerts += self._redis(redis_down_for, now)
        if orphans is not None:
            alerts += self._orphans(orphans, now)
        return alerts

    def _orphans(self, orphans: dict[str, int], now: float) -> list[Alert]:
        alerts = []
        watched = {t for rule, t in self._holds if rule == ORPHAN_TOPIC} | set(orphans)
        for topic in sorted(watched):
            event = self._hold(ORPHAN_TOPIC, topic, self.alert_after).update(
                topic in orphans, now)
            if event == FIRE:
                alerts.append(Alert(
                    ORPHAN_TOPIC, topic, f"orphan topic {topic}: {plural(orphans[topic], 'job')}"
                    " waiting", f"{plural(orphans[topic], 'job')} wait in the ready list of "
                    f"topic {topic!r}, which no config on {self.node} declares and no worker "
                    f"serves: they will never run. A typo in the topic name pushed to, or a "
                    f"producer with another prefix? `ssjobs check` lists such topics.",
                    "warning"))
            elif event == RECOVERED:
                alerts.append(Alert(ORPHAN_TOPIC, topic, f"recovered: orphan topic {topic}",
                                    f"The ready list of topic {topic!r} is empty or served "
                                    "again.", "info", recovered=True))
        return alerts

    def _hold(self, rule: str, topic: str, after: float = 0.0, recovers: bool = True) -> Hold:
        return self._holds.setdefault((rule, topic), Hold(after, self.repeat, recovers))

    def _rose(self, what: str, topic: str, value: int, now: float) -> bool:
        return self._recent.setdefault((what, topic), Recent(QUIET_AFTER_S)).update(value, now)

    def _backlog(self, v: TopicView, now: float) -> list[Alert]:
        if v.backlog is None or v.health <= 0:
            return []
        hold = self._hold(BACKLOG, v.topic, self.alert_after)
        event = hold.update(v.backlog > v.health, now)
        if event == FIRE:
            jobs = plural(v.backlog, "job")
            return [Alert(BACKLOG, v.topic, f"backlog on {v.topic}: {jobs} waiting",
                          f"{jobs} wait on topic {v.topic!r}, more than "
                          f"queue_health_size = {v.health}, for {now - (hold.since or now):.0f} s.",
                          "warning")]
        if event == RECOVERED:
            return [Alert(BACKLOG, v.topic, f"recovered: backlog on {v.topic}",
                          f"The backlog of topic {v.topic!r} is down to {v.backlog} "
                          f"(queue_health_size = {v.health}).", "info", recovered=True)]
        return []

    def _dead_letters(self, v: TopicView, now: float) -> list[Alert]:
        if v.dead is None:
            return []
        count = self._tallies.setdefault(v.topic, Tally(self.repeat)).update(v.dead, now)
        if not count:
            return []
        return [Alert(DEAD_LETTERS, v.topic, f"{plural(count, 'new dead letter')} on {v.topic}",
                      f"{plural(count, 'job')} of topic {v.topic!r} dead-lettered since the last "
                      f"report; {v.dead[0]} in the dead-letter list. "
                      f"See: ssjobs dead list {v.topic}")]

    def _crashes(self, v: TopicView, now: float) -> list[Alert]:
        alerts: list[Alert] = []
        failing = self._rose("startup", v.topic, v.startup_failures, now)
        event = self._hold(CONSUMER_IMPORT, v.topic).update(failing, now)
        if event == FIRE:
            alerts.append(Alert(
                CONSUMER_IMPORT, v.topic, f"consumer of {v.topic} cannot start",
                f"Workers of topic {v.topic!r} on {self.node} exit before their consumer "
                f"{v.consumer!r} is ready ({v.startup_failures} so far): it cannot be "
                f"imported or its setup() fails. The log has the error; `ssjobs check` "
                f"imports every consumer."))
        elif event == RECOVERED:
            alerts.append(Alert(CONSUMER_IMPORT, v.topic, f"recovered: consumer of {v.topic}",
                                f"Workers of topic {v.topic!r} on {self.node} start again.",
                                "info", recovered=True))
        crashing = self._rose("crash", v.topic, v.crashes, now) \
            and v.crashes >= scaling.CRASH_LOOP_AT
        # A consumer that cannot start also crash-loops: it is reported as the cause above.
        event = self._hold(CRASH_LOOP, v.topic).update(crashing and not failing, now)
        if event == FIRE:
            alerts.append(Alert(
                CRASH_LOOP, v.topic, f"{v.topic} workers are crash-looping",
                f"Workers of topic {v.topic!r} on {self.node} crashed {v.crashes} times in a "
                f"row right after start; restarts back off up to "
                f"{scaling.CRASH_BACKOFF_MAX_S:.0f} s. The log has each exit."))
        elif event == RECOVERED:
            alerts.append(Alert(CRASH_LOOP, v.topic, f"recovered: {v.topic} crash loop",
                                f"Workers of topic {v.topic!r} on {self.node} stopped "
                                f"crashing.", "info", recovered=True))
        return alerts

    def _stuck(self, v: TopicView, now: float) -> list[Alert]:
        event = self._hold(STUCK_JOB, v.topic, recovers=False).update(bool(v.stuck), now)
        if event != FIRE:
            return []
        jobs = "; ".join(f"job {job_id or '?'} in worker pid {pid} for {secs:.0f} s"
                         for pid, job_id, secs in v.stuck)
        return [Alert(STUCK_JOB, v.topic, f"job stuck on {v.topic}",
                      f"Past job_timeout = {v.job_timeout:g} s on {self.node}: {jobs}. The "
                      f"job ignores its timeout (blocked outside Python?); the master kills "
                      f"its worker.")]

    def _redis(self, down_for: float | None, now: float) -> list[Alert]:
        hold = self._hold(REDIS_DOWN, "")
        since = hold.since
        event = hold.update(down_for is not None and down_for >= self.alert_after, now)
        if event == FIRE:
            return [Alert(REDIS_DOWN, "", f"redis unreachable for {down_for:.0f} s",
                          f"The master on {self.node} cannot reach Redis for {down_for:.0f} s. "
                          f"Workers wait and retry; they resume when it is back.",
                          fleet=False)]
        if event == RECOVERED:
            total = (now - since if since is not None else 0.0) + self.alert_after
            return [Alert(REDIS_DOWN, "", "recovered: redis reachable again",
                          f"The master on {self.node} reaches Redis again after about "
                          f"{total:.0f} s.", "info", recovered=True, fleet=False)]
        return []


def reload_refused(topic: str, why: str, node: str) -> Alert:
    """The alert for a topic whose reload was refused (sent once, when it happens)."""
    return Alert(RELOAD_REFUSED, topic, f"reload refused for {topic}",
                 f"A reload on {node} tried the new config and code of topic {topic!r} with "
                 f"one new worker first; {why}. The topic keeps its running workers, code and "
                 f"settings. Fix it, run `ssjobs check`, then reload again.", fleet=False)


# -- reading the master ----------------------------------------------------------------------

def observe(master: Master, now: float, *, redis_up: bool = True) -> list[TopicView]:
    """A TopicView per topic from the master's state (``now`` in epoch seconds)."""
    dead = _dead_counts(master) if redis_up else {}
    busy: dict[str, list[tuple[int, float, int]]] = {}
    for proc in list(master.workers.values()):
        slot = master.board.slot(proc.slot)
        if slot.state == BUSY:
            busy.setdefault(proc.topic, []).append((proc.pid, slot.job_started_at,
                                                    proc.slot))
    views = []
    for topic, ts in master.topics.items():
        job = ts.job
        mine = busy.get(topic, [])
        late = stuck_jobs([(pid, started) for pid, started, _ in mine], job.job_timeout, now)
        slot_of = {pid: index for pid, _, index in mine}
        stuck = tuple((pid, master.board.slot(slot_of[pid]).read()["job_id"] or "", secs)
                      for pid, secs in late)
        views.append(TopicView(topic, health=job.queue_health_size,
                               backlog=ts.backlog if redis_up else None, dead=dead.get(topic),
                               crashes=ts.crashes, startup_failures=ts.startup_failures,
                               stuck=stuck, job_timeout=job.job_timeout,
                               consumer=job.consumer))
    return views


def _dead_counts(master: Master) -> dict[str, tuple[int, int]]:
    """topic -> (LLEN dead, lifetime dead counter): one pipelined round trip per Redis."""
    groups: dict[int, list[tuple[str, Any]]] = {}
    for topic, ts in master.topics.items():
        groups.setdefault(id(ts.broker.client), []).append((topic, ts.broker))
    out: dict[str, tuple[int, int]] = {}
    for members in groups.values():
        try:
            counts = Broker.dead_counts([broker for _, broker in members])
        except BrokerError as exc:
            log.debug("alerts: dead-letter counts unavailable: %s", exc)
            continue
        for (topic, _), count in zip(members, counts, strict=True):
            out[topic] = count
    return out


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Threads started inside inherit this mask: the master's signals stay on its main
    thread, and a helper thread's system calls are never interrupted by them."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELPER_BLOCKED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# -- the master extension --------------------------------------------------------------------

class AlertsExtension:
    """Built by the master when ``[notifier]`` is configured: ``start``, ``tick`` once a
    second (never blocks on the notifier), ``stop``; a reload makes a new one."""

    def __init__(self, master: Master) -> None:
        assert master.cfg.notifier is not None  # built only for a config with [notifier]
        self.cfg: NotifierConfig = master.cfg.notifier
        self.notifier = make_notifier(self.cfg.kind, self.cfg.params)
        self.rules = Rules(alert_after=self.cfg.alert_after, repeat=self.cfg.repeat_interval,
                           node=master.node)
        self.sender: AsyncSender | None = None
        self.relay: RelayServer | None = None
        self._sink: Any = None
        self._owned: set[tuple[str, str]] = set()  # alerts this host sent: it sends recovery

    def start(self, master: Master) -> None:
        if not (self.cfg.log_notify or self.cfg.jobs_check_notify):
            return
        with _signals_blocked():
            self.sender = AsyncSender(self.notifier, repeat_interval=self.cfg.repeat_interval)
            if self.cfg.log_notify:
                self._sink = error_sink(self.sender)
                try:
                    self.relay = RelayServer(self._sink)
                except OSError as exc:
                    report_relay_failure(f"cannot start: {exc.strerror or exc}")
        if self._sink is not None:
            logs.add_error_sink(self._sink)
        if self.cfg.jobs_check_notify:
            down = master.outage.down_for("redis")
            self.rules.prime(observe(master, time.time(), redis_up=down is None),
                             time.monotonic())
        log.info("notifier %s: %s", self.cfg.kind, " and ".join(
            what for what, on in (("ERROR lines", self.cfg.log_notify),
                                  ("job alerts", self.cfg.jobs_check_notify)) if on))

    def tick(self, master: Master, now: float) -> None:
        if self.sender is None or not self.cfg.jobs_check_notify:
            return
        mono = time.monotonic()
        outage = getattr(master, "outage", None)
        down_for = outage.down_for("redis", mono) if outage is not None else None
        views = observe(master, now, redis_up=down_for is None)
        orphans = getattr(master, "orphan_topics", None)
        for alert in self.rules.evaluate(views, down_for, mono, orphans):
            if self._may_send(master, alert):
                self.sender.submit(alert.title, alert.text, alert.level, dedup=False,
                                   topic=alert.topic, alert=alert.rule)

    def fds(self) -> list[int]:
        """None to list: the relay closes its own socket in every forked child, and the
        sender's HTTP connections live only while a message is being sent."""
        return []

    def worker_exited(self, master: Master, slot: int, info: dict) -> None:
        pass

    def reloaded(self, master: Master, refused: dict[str, str]) -> None:
        """Called after a reload started this extension: alert each refused topic."""
        if self.sender is None or not self.cfg.jobs_check_notify:
            return
        for topic, why in refused.items():
            alert = reload_refused(topic, why, master.node)
            self.sender.submit(alert.title, alert.text, alert.level, dedup=False,
                               topic=alert.topic, alert=alert.rule)

    def stop(self, master: Master) -> None:
        if self._sink is not None:
            logs.remove_error_sink(self._sink)
            self._sink = None
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        if self.sender is not None:
            self.sender.close(STOP_FLUSH_S)
            self.sender = None

    def _may_send(self, master: Master, alert: Alert) -> bool:
        """Fleet de-dup: only the host that claimed a firing alert sends it, and only the
        host that sent it sends its recovery."""
        key = (alert.rule, alert.topic)
        if not alert.fleet:
            return True
        if alert.recovered:
            if key in self._owned:
                self._owned.discard(key)
                return True
            return False
        if self._claim(master, alert):
            self._owned.add(key)
            return True
        self._owned.discard(key)
        return False

    def _claim(self, master: Master, alert: Alert) -> bool:
        """``SET {prefix}:alert:{rule}:{topic} node NX PX``; it expires a tick before
        ``repeat_interval`` so the next round is not lost to clock phase."""
        ts = master.topics.get(alert.topic)
        if ts is not None:
            client, prefix = ts.broker.client, ts.broker.keys.prefix
        else:  # a topic of no config (orphan_topic): claimed on the main Redis
            main = master.clients.get(master.cfg.redis.url)
            if main is None:
                return True
            client, prefix = main, master.cfg.redis.prefix
        key = f"{prefix}:alert:{alert.rule}:{alert.topic}"
        ttl_ms = max(int((self.cfg.repeat_interval - scaling.MASTER_TICK_S) * 1000),
                     MIN_CLAIM_MS)
        try:
            return claim(client, key, master.node, ttl_ms)
        except BrokerError as exc:
            log.debug("alerts: cannot de-duplicate %s (%s): sending it from here", key, exc)
            return True  # better twice than never
