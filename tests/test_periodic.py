"""Periodic jobs (``[[periodic]]``): when a schedule is due (cron across DST, every N s),
each tick enqueued exactly once by however many masters share the Redis while they start,
reload and die, no back-fill after a pause, and what status and check say."""
from __future__ import annotations

import datetime
import json
import signal
import subprocess
import sys
import time
import zoneinfo
from collections import Counter

import pytest
from conftest import wait_for
from masters import MasterProc

from ssjobs.config import PeriodicConfig
from ssjobs.periodic import Schedule

# -- when: the pure part -------------------------------------------------------------------


def local(epoch: float, zone: str) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=zoneinfo.ZoneInfo(zone)).isoformat()


def runs(cron: str, zone: str, start: tuple, n: int) -> list[str]:
    schedule = Schedule(PeriodicConfig(topic="t", cron=cron, timezone=zone))
    at = datetime.datetime(*start, tzinfo=zoneinfo.ZoneInfo(zone)).timestamp()
    out = []
    for _ in range(n):
        at = schedule.next_after(at)
        out.append(local(at, zone))
    return out


@pytest.mark.parametrize("cron, zone, start, expected", [
    # spring forward: 02:30 does not exist on 2026-03-08 in New York; it runs once, at 03:00
    ("30 2 * * *", "America/New_York", (2026, 3, 7, 12),
     ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    # fall back: 01:30 happens twice on 2026-11-01; a daily job runs once
    ("30 1 * * *", "America/New_York", (2026, 10, 31, 12),
     ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    # an hourly job runs every real hour, the repeated one too
    ("0 * * * *", "America/New_York", (2026, 11, 1, 0, 30),
     ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T02:00:00-05:00"]),
    # weekdays at 08:00 in Shanghai, from a Saturday
    ("0 8 * * 1-5", "Asia/Shanghai", (2026, 12, 5, 12),
     ["2026-12-07T08:00:00+08:00", "2026-12-08T08:00:00+08:00"]),
    ("@daily", "UTC", (2026, 12, 31, 23, 59), ["2027-01-01T00:00:00+00:00",
                                                "2027-01-02T00:00:00+00:00"]),
    ("@monthly", "Europe/Berlin", (2026, 1, 31), ["2026-02-01T00:00:00+01:00",
                                                  "2026-03-01T00:00:00+01:00"]),
])
def test_cron_ticks_across_dst_and_zones(cron, zone, start, expected):
    assert runs(cron, zone, start, len(expected)) == expected


def test_every_is_aligned_to_the_epoch_so_every_master_agrees():
    schedule = Schedule(PeriodicConfig(topic="t", every=30))
    assert schedule.latest(1000.0) == 990.0 and schedule.next_after(990.0) == 1020.0
    assert schedule.latest(990.0) == 990.0
    assert schedule.ticks_between(990.0, 1110.0) == 4


def test_latest_and_missed_ticks_of_a_cron_schedule():
    schedule = Schedule(PeriodicConfig(topic="t", cron="*/15 * * * *", timezone="UTC"))
    at = datetime.datetime(2026, 6, 1, 10, 7, tzinfo=datetime.timezone.utc).timestamp()
    assert local(schedule.latest(at), "UTC") == "2026-06-01T10:00:00+00:00"
    assert schedule.ticks_between(at - 3600, at) == 4
    yearly = Schedule(PeriodicConfig(topic="t", cron="0 0 1 1 *", timezone="UTC"))
    assert local(yearly.latest(at), "UTC") == "2026-01-01T00:00:00+00:00"


def test_the_same_schedule_names_the_same_key_in_every_config():
    a = Schedule(PeriodicConfig(topic="t", cron="0 8 * * *", timezone="UTC", payload={"x": 1}))
    b = Schedule(PeriodicConfig(topic="t", cron="0 8 * * *", timezone="UTC", payload={"x": 1}))
    c = Schedule(PeriodicConfig(topic="t", cron="0 9 * * *", timezone="UTC", payload={"x": 1}))
    assert a.id == b.id != c.id


# -- exactly once, with real masters -------------------------------------------------------

CONSUMERS = """
import json, os

def run(job):
    line = json.dumps({"tick": job.headers.get("tick"), "payload": job.payload,
                       "pid": os.getpid()})
    fd = os.open(os.path.join(os.path.dirname(__file__), "ticks.jsonl"),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (line + "\\n").encode())
    os.close(fd)
"""
PERIODIC = """
[[periodic]]
topic = "beat"
every = 1
payload = { kind = "beat" }
"""


def ticks(project) -> list[dict]:
    path = project.consumers / "ticks.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def write(project, data_dir: str, extra: str = PERIODIC):
    project.write_config([{"topic": "beat", "consumer": "beats:run"}], extra=extra)
    path = project.root / f"{data_dir}.toml"
    path.write_text(project.config.read_text().replace('"./data/process"', f'"./{data_dir}"'))
    return path


@pytest.fixture
def beats(project):
    project.consumer("beats", CONSUMERS)
    return project


def test_three_masters_one_sigkilled_one_reloaded_enqueue_each_tick_exactly_once(beats):
    masters = [MasterProc(write(beats, f"m{i}"), beats.root / f"m{i}") for i in range(3)]
    try:
        for m in masters:
            m.start()
        started = time.time()
        wait_for(lambda: len(ticks(beats)) >= 3, 10, what="3 ticks")
        masters[0].proc.kill()                     # SIGKILL: its workers follow (PDEATHSIG)
        masters[1].signal(signal.SIGHUP)           # a reload: a new scheduler
        wait_for(lambda: len(ticks(beats)) >= 8, 15, what="8 ticks")
        ended = time.time()
    finally:
        for m in masters:
            m.kill_all()
    seen = [t["tick"] for t in ticks(beats)]
    assert all(t["payload"] == {"kind": "beat"} for t in ticks(beats))
    assert [n for n in Counter(seen).values() if n > 1] == []          # none twice
    first, last = min(seen), max(seen)
    assert sorted(seen) == [first + i for i in range(int(last - first) + 1)]   # none missed
    assert started - 1.5 <= first and last <= ended
    assert all(float(t).is_integer() for t in seen)                  # aligned: 1 s ticks


def test_a_tick_missed_while_no_master_ran_is_not_back_filled(beats):
    config = write(beats, "solo")
    master = MasterProc(config, beats.root / "solo")
    try:
        master.start()
        wait_for(lambda: len(ticks(beats)) >= 2, 10, what="2 ticks")
        assert master.stop() == 0
        stopped = time.time()
        time.sleep(4)
        master.start()
        wait_for(lambda: [t for t in ticks(beats) if t["tick"] > stopped + 3], 10,
                 what="a tick after the restart")
        time.sleep(0.5)
    finally:
        master.kill_all()
    seen = sorted(t["tick"] for t in ticks(beats))
    assert len(seen) == len(set(seen))
    gap = [b - a for a, b in zip(seen, seen[1:], strict=False) if b - a > 1]
    assert gap and gap[0] >= 3                      # the ticks of the pause never ran
    log = (beats.root / "data" / "logs" / "ssjobs.log").read_text()
    assert "missed while no master ran; not run now (no back-fill)" in log


def test_status_shows_each_schedule_with_its_next_and_last_run(beats):
    extra = PERIODIC + """
[[periodic]]
topic = "beat"
cron = "0 8 * * 1-5"
timezone = "Asia/Shanghai"
"""
    config = write(beats, "st", extra)
    master = MasterProc(config, beats.root / "st")

    def status() -> dict:
        out = subprocess.run([sys.executable, "-m", "ssjobs", "status", "--json", "-c",
                              str(config)], capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout)

    try:
        master.start()
        wait_for(lambda: ticks(beats), 10, what="a tick")
        running = wait_for(lambda: (s := status())["periodic"][0]["last_run_at"] and s, 10,
                           what="last_run_at")
    finally:
        master.kill_all()
    every, cron = running["periodic"]
    assert every["topic"] == "beat" and every["schedule"] == "every 1s"
    assert every["last_run_at"] in [t["tick"] for t in ticks(beats)]
    # (against the last run, not the clock: the master is gone by now and its snapshot
    # was up to a second old)
    assert 0 < every["next_run_at"] - every["last_run_at"] <= 2.001
    assert cron["schedule"] == "0 8 * * 1-5" and cron["last_run_at"] is None
    when = datetime.datetime.fromtimestamp(cron["next_run_at"], tz=zoneinfo.ZoneInfo(
        "Asia/Shanghai"))
    assert (when.hour, when.minute) == (8, 0) and when.weekday() < 5
    stopped = status()                                  # no master: from Redis and config
    assert stopped["running"] is False
    assert [p["schedule"] for p in stopped["periodic"]] == ["every 1s", "0 8 * * 1-5"]


@pytest.mark.parametrize("extra, problem", [
    ('[[periodic]]\ntopic = "beat"\ncron = "61 * * * *"',
     "periodic[0].cron (line 17): is not a cron"),
    ('[[periodic]]\ntopic = "beat"\ncron = "* * * * * *"', "5 fields"),
    ('[[periodic]]\ntopic = "beat"\ncron = "@daily"\ntimezone = "Mars/Olympus"',
     "periodic[0].timezone (line 18): is not a time zone"),
    ('[[periodic]]\ntopic = "nope"\nevery = 5', "periodic[0].topic"),
    ('[[periodic]]\ntopic = "beat"', "set exactly one of cron and every"),
    ('[[periodic]]\ntopic = "beat"\nevery = 0.5', "must be >= 1 second"),
])
def test_check_names_a_bad_schedule_in_one_line(beats, extra, problem):
    config = write(beats, "chk", extra)
    out = subprocess.run([sys.executable, "-m", "ssjobs", "check", "-c", str(config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert problem in out.stderr, out.stderr
