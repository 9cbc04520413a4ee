"""Periodic jobs (``[[periodic]]``): when each schedule is due, and the master's part of
enqueueing each tick exactly once across every master that shares the Redis.

The pure part, :class:`Schedule`, says which tick is the latest due and which comes next:
cron expressions through cronsim (correct across DST: a 02:30 job runs once on the day the
clocks spring forward, at 03:00, and once on the day they fall back), or ``every`` N
seconds, aligned to the epoch so every master agrees without talking. The claim is
``tick.lua``: the schedule's key holds the last tick enqueued, so no tick is enqueued twice
and none the fleet already had (docs/design.md, "Periodic jobs").

A tick missed while no master ran is not back-filled: a master enqueues a tick only within
``GRACE_S`` of it, and says once how many it skipped.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import zoneinfo
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import envelope
from .errors import BrokerUnavailable
from .rules import CRON_NICKNAMES
from .text import when

if TYPE_CHECKING:
    from .broker import Broker
    from .config import PeriodicConfig

log = logging.getLogger("ssjobs.master")

GRACE_S = 30.0        # a tick is enqueued at most this late (a master busy, just restarted)
MISSED_COUNT_MAX = 100_000   # counting missed cron ticks stops here (a long outage)


def local_zone() -> zoneinfo.ZoneInfo | datetime.tzinfo:
    """This host's time zone with its DST rules ($TZ, else what /etc/localtime links to,
    else /etc/timezone); a fixed offset (no DST) only when none of those names one."""
    import os

    names = [os.environ.get("TZ", "").lstrip(":")]
    try:
        names.append(os.path.realpath("/etc/localtime").split("/zoneinfo/", 1)[1])
    except IndexError:
        pass
    try:
        with open("/etc/timezone") as f:
            names.append(f.read().strip())
    except OSError:
        pass
    for name in names:
        if name:
            try:
                return zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                continue
    return datetime.datetime.now().astimezone().tzinfo or datetime.timezone.utc


class Schedule:
    """One ``[[periodic]]`` entry's times (pure: no clock, no Redis)."""

    def __init__(self, cfg: PeriodicConfig) -> None:
        self.cfg = cfg
        self.every = float(cfg.every)
        self.cron = CRON_NICKNAMES.get(cfg.cron.strip(), cfg.cron) if cfg.cron else ""
        self.zone = zoneinfo.ZoneInfo(cfg.timezone) if cfg.timezone else local_zone()
        # the same schedule in every master's config names the same key
        ident = json.dumps([cfg.topic, cfg.cron, cfg.every, cfg.timezone, cfg.payload],
                           sort_keys=True, default=str)
        self.id = hashlib.sha1(ident.encode()).hexdigest()[:16]

    def _local(self, epoch: float) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(epoch, tz=self.zone)

    def next_after(self, epoch: float) -> float:
        """The first tick strictly after ``epoch``."""
        if self.every:
            return (math.floor(epoch / self.every) + 1) * self.every
        from cronsim import CronSim

        start = self._local(epoch)
        for tick in CronSim(self.cron, start):
            if tick.timestamp() > epoch:
                return tick.timestamp()
        raise ValueError(f"cron {self.cron!r} has no next run")  # pragma: no cover

    def latest(self, epoch: float) -> float:
        """The last tick at or before ``epoch``."""
        if self.every:
            return math.floor(epoch / self.every) * self.every
        # cron ticks are at least a minute apart and at most a year: step back until one
        # lands in the window, then walk forward to the last one not after epoch
        for span in (3600.0, 86400.0 * 2, 86400.0 * 40, 86400.0 * 400):
            tick = self.next_after(epoch - span)
            if tick <= epoch:
                while (after := self.next_after(tick)) <= epoch:
                    tick = after
                return tick
        return -math.inf

    def ticks_between(self, after: float, until: float) -> int:
        """How many ticks fall in (after, until]: those a master missed."""
        if until <= after:
            return 0
        if self.every:
            return int(self.latest(until) // self.every - self.latest(after) // self.every)
        count, tick = 0, self.next_after(after)
        while tick <= until and count < MISSED_COUNT_MAX:
            count += 1
            tick = self.next_after(tick)
        return count


@dataclass
class _Entry:
    schedule: Schedule
    broker: Broker
    handled: float = -math.inf   # the latest tick this master dealt with (enqueued or not)
    last_run: float | None = None


class Scheduler:
    """The master's side: once a second, each schedule's latest due tick is offered to
    Redis (``Broker.enqueue_tick``); whichever master's call comes first enqueues it."""

    def __init__(self, entries: list[tuple[PeriodicConfig, Broker]], now: float) -> None:
        self.entries = [_Entry(Schedule(cfg), broker) for cfg, broker in entries]
        self.started = now

    def tick(self, now: float) -> None:
        for entry in self.entries:
            due = entry.schedule.latest(now)
            if due <= entry.handled:
                continue
            try:
                self._offer(entry, due, now)
            except BrokerUnavailable:
                return  # the master's housekeeping notes the outage; the tick is offered again

    def _offer(self, entry: _Entry, due: float, now: float) -> None:
        cfg = entry.schedule.cfg
        if entry.handled == -math.inf:
            last = entry.broker.last_tick(entry.schedule.id)
            entry.last_run = last
            if last is not None and due > last:
                missed = entry.schedule.ticks_between(last, due) - (now - due <= GRACE_S)
                if missed > 0:
                    log.info("periodic %r on %r: %d tick(s) since %s missed while no master "
                             "ran; not run now (no back-fill)", cfg.schedule, cfg.topic, missed,
                             when(last))
        if now - due > GRACE_S:
            entry.handled = due  # too late for this one: the next one is enqueued on time
            return
        job_id = envelope.new_id(now)
        env = envelope.encode(job_id, cfg.topic, cfg.payload, 0, now,
                              {"periodic": entry.schedule.id, "tick": due})
        if entry.broker.enqueue_tick(entry.schedule.id, due, env):
            log.info("periodic %r: enqueued job %s on %r for %s", cfg.schedule, job_id,
                     cfg.topic, when(due))
        entry.handled = due
        entry.last_run = due

    def view(self, now: float) -> list[dict]:
        """What ``status --json`` shows of each schedule."""
        return [{"topic": e.schedule.cfg.topic, "schedule": e.schedule.cfg.schedule,
                 "timezone": e.schedule.cfg.timezone or None,
                 "next_run_at": e.schedule.next_after(now), "last_run_at": e.last_run}
                for e in self.entries]


def view_of(configs: tuple[PeriodicConfig, ...], last: dict[str, float | None],
            now: float) -> list[dict]:
    """Status of schedules seen from outside a master (``ssjobs status`` itself): the last
    tick from Redis (``last``: schedule id → tick)."""
    out = []
    for cfg in configs:
        schedule = Schedule(cfg)
        out.append({"topic": cfg.topic, "schedule": cfg.schedule,
                    "timezone": cfg.timezone or None, "next_run_at": schedule.next_after(now),
                    "last_run_at": last.get(schedule.id)})
    return out
