"""Job options at push (priority, unique keys, per-job max_retries) and flow control
(rate_limit, concurrency) shared by every worker of every master, against real masters,
workers and a private Redis."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import spawn_worker, wait_for
from masters import MasterProc

from ssjobs.broker import Broker, TopicKeys
from ssjobs.producer import Producer

CONSUMERS = """
import json, os, time

def run(job):
    start = time.time()
    p = job.payload if isinstance(job.payload, dict) else {}
    time.sleep(p.get("sleep", 0))
    if p.get("hold") and job.attempts == 0:   # (run again after a crash, it is quick)
        time.sleep(30)
    line = json.dumps({"id": job.id, "n": p.get("n"), "start": start, "end": time.time(),
                       "attempts": job.attempts, "pid": os.getpid()})
    fd = os.open(os.path.join(os.path.dirname(__file__), "runs.jsonl"),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (line + "\\n").encode())
    os.close(fd)
    if p.get("fail"):
        raise ValueError("asked to fail")
"""


@pytest.fixture
def flow(project):
    project.consumer("flow", CONSUMERS)
    return project


def runs(project) -> list[dict]:
    path = project.consumers / "runs.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def masters_on(project, jobs: list[dict], n: int) -> list[MasterProc]:
    """``n`` masters (their own data_dir each) on one Redis: as many hosts."""
    project.write_config(jobs)
    out = []
    for i in range(n):
        path = project.root / f"host{i}.toml"
        path.write_text(project.config.read_text().replace('"./data/process"', f'"./host{i}"'))
        out.append(MasterProc(path, project.root / f"host{i}"))
    return out


def started(masters: list[MasterProc]) -> list[MasterProc]:
    for m in masters:
        m.start()
    return masters


# -- priority --------------------------------------------------------------------------------

def test_higher_priority_runs_first_fifo_within_one_priority(flow, rclient):
    (master,) = masters_on(flow, [{"topic": "p", "consumer": "flow:run"}], 1)
    with Producer(flow.redis_url, prefix="t") as p:
        for n in range(4):
            p.push("p", {"n": f"0-{n}"})
        for n in range(3):
            p.push("p", {"n": f"5-{n}"}, priority=5)
        p.push_many("p", [{"n": "9-0"}, {"n": "9-1"}], priority=9)
        p.push("p", {"n": "0-4"})
        p.push("p", {"n": "5-3"}, priority=5)
    try:
        master.start()
        wait_for(lambda: len(runs(flow)) == 11, 15, what="11 jobs")
    finally:
        master.kill_all()
    assert [r["n"] for r in runs(flow)] == ["9-0", "9-1", "5-0", "5-1", "5-2", "5-3",
                                            "0-0", "0-1", "0-2", "0-3", "0-4"]


def test_a_priority_job_wakes_an_idle_worker_at_once_and_its_wake_up_is_no_job(flow, rclient):
    flow.write_config([{"topic": "p", "consumer": "flow:run"}])
    master = MasterProc(flow.config, flow.data_dir)
    try:
        master.start()
        time.sleep(1.5)                                     # the worker waits on ready
        with Producer(flow.redis_url, prefix="t") as p:
            pushed = time.time()
            p.push("p", {"n": "urgent"}, priority=7)
            wait_for(lambda: runs(flow), 5, interval=0.002, what="the priority job")
            latency = runs(flow)[0]["start"] - pushed
            p.push("p", {"n": "plain"})
            wait_for(lambda: len(runs(flow)) == 2, 5, what="the next job")
        broker = Broker(rclient, "t", "p")
        wait_for(lambda: broker.counts()["processed"] == 2, 5, what="2 processed")
        counts = broker.counts()
    finally:
        master.kill_all()
    assert latency < 0.25, latency
    assert counts["processed"] == 2 and counts["dead"] == 0 and counts["backlog"] == 0


# -- unique keys -----------------------------------------------------------------------------

def test_a_unique_key_holds_while_queued_retrying_and_running_and_is_released_after(
        flow, rclient):
    (master,) = masters_on(flow, [{"topic": "u", "consumer": "flow:run", "max_retries": 1,
                                   "retry_backoff": 0.5}], 1)
    unique = TopicKeys("t", "u").unique("daily")
    with Producer(flow.redis_url, prefix="t") as p:
        first = p.push("u", {"n": 1, "fail": True}, unique_key="daily")
        assert p.push("u", {"n": 2}, unique_key="daily") == first        # queued
        assert rclient.llen(TopicKeys("t", "u").ready) == 1
        try:
            master.start()
            wait_for(lambda: len(runs(flow)) == 1, 10, what="the first run")
            assert p.push("u", {"n": 3}, unique_key="daily") == first    # retrying
            wait_for(lambda: len(runs(flow)) == 2, 10, what="the retry")
            wait_for(lambda: rclient.get(unique) is None, 5, what="the key released (dead)")
            second = p.push("u", {"n": 4, "sleep": 0.5}, unique_key="daily")
            assert second != first
            wait_for(lambda: len(runs(flow)) == 2 and rclient.hget(
                TopicKeys("t", "u").stats, "processed") is None and
                rclient.llen(TopicKeys("t", "u").ready) == 0, 5, what="it running")
            assert p.push("u", {"n": 5}, unique_key="daily") == second   # running
            wait_for(lambda: len(runs(flow)) == 3, 10, what="the second job")
            wait_for(lambda: rclient.get(unique) is None, 5, what="the key released (done)")
            third = p.push("u", {"n": 6}, unique_key="daily")
            wait_for(lambda: len(runs(flow)) == 4, 10, what="the third job")
        finally:
            master.kill_all()
    assert third not in (first, second)
    assert [r["n"] for r in runs(flow)] == [1, 1, 4, 6]
    assert rclient.llen(TopicKeys("t", "u").dead) == 1


def test_a_unique_key_survives_a_worker_crash_and_expires_after_unique_for(flow, rclient):
    (master,) = masters_on(flow, [{"topic": "u", "consumer": "flow:run"}], 1)
    unique = TopicKeys("t", "u").unique("k")
    with Producer(flow.redis_url, prefix="t") as p:
        try:
            master.start()
            held = p.push("u", {"hold": True}, unique_key="k")
            wait_for(lambda: rclient.llen(TopicKeys("t", "u").ready) == 0, 5, what="taken")
            time.sleep(0.3)
            (worker,) = master.workers()
            master.signal(signal.SIGSTOP)      # no recovery yet: the key outlives the worker
            try:
                os.kill(worker["pid"], signal.SIGKILL)
                wait_for(lambda: master.zombies(), 10, what="the dead worker")
                assert p.push("u", {"n": 1}, unique_key="k") == held
            finally:
                master.signal(signal.SIGCONT)
            # recovered, run again (quickly: a second attempt does not hold), released
            wait_for(lambda: len(runs(flow)) == 1, 15, what="the second run")
            wait_for(lambda: rclient.get(unique) is None, 5, what="the key released")
            assert runs(flow)[0]["attempts"] == 1
        finally:
            master.kill_all()
        rclient.delete(TopicKeys("t", "u").ready, TopicKeys("t", "u").unique("k"))
        first = p.push("u", {"n": 2}, unique_key="short", unique_for=1)
        assert p.push("u", {"n": 3}, unique_key="short", unique_for=1) == first
        time.sleep(1.2)
        assert p.push("u", {"n": 4}, unique_key="short", unique_for=1) != first
    assert rclient.llen(TopicKeys("t", "u").ready) == 2


# -- a job's own max_retries -----------------------------------------------------------------

def test_a_jobs_own_max_retries_beats_the_topics(flow, rclient):
    (master,) = masters_on(flow, [{"topic": "r", "consumer": "flow:run", "max_retries": 5,
                                   "retry_backoff": 0.1}], 1)
    with Producer(flow.redis_url, prefix="t") as p:
        none = p.push("r", {"n": "none", "fail": True}, max_retries=0)
        two = p.push("r", {"n": "two", "fail": True}, max_retries=2)
    try:
        master.start()
        wait_for(lambda: rclient.llen(TopicKeys("t", "r").dead) == 2, 20, what="2 dead")
    finally:
        master.kill_all()
    attempts = {}
    for r in runs(flow):
        attempts.setdefault(r["id"], []).append(r["attempts"])
    assert attempts == {none: [0], two: [0, 1, 2]}


# -- flow control across hosts ---------------------------------------------------------------

def windows(times: list[float], width: float) -> int:
    """The most events in any window of ``width`` seconds."""
    times = sorted(times)
    most, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= width:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


def test_rate_limit_is_shared_by_every_worker_of_two_masters(flow, rclient):
    masters = masters_on(flow, [{"topic": "rl", "consumer": "flow:run", "static_workers": 2,
                                 "rate_limit": "20/s"}], 2)
    with Producer(flow.redis_url, prefix="t") as p:
        p.push_many("rl", [{"n": i} for i in range(70)])
    try:
        began = time.time()
        started(masters)
        wait_for(lambda: len(runs(flow)) == 70, 20, what="70 jobs")
        took = time.time() - began
        hosts = {r["pid"] for r in runs(flow)}
    finally:
        for m in masters:
            m.kill_all()
    starts = [r["start"] for r in runs(flow)]
    # Redis' clock judges when a batch is taken; its jobs start up to a batch's run time
    # later (batches are ~20 ms of work), so windows a little under 1 s hold at most 20
    assert windows(starts, 0.9) <= 20, windows(starts, 0.9)
    assert took >= 2.4                                      # 70 at 20/s: at least 2.5 s
    assert len(hosts) >= 3                                  # the work was shared
    assert sorted(r["n"] for r in runs(flow)) == list(range(70))   # none lost, none twice


def test_concurrency_is_shared_by_every_worker_of_two_masters(flow, rclient):
    masters = masters_on(flow, [{"topic": "cc", "consumer": "flow:run", "static_workers": 3,
                                 "concurrency": 2}], 2)
    with Producer(flow.redis_url, prefix="t") as p:
        p.push_many("cc", [{"n": i, "sleep": 0.1} for i in range(24)])
    try:
        started(masters)
        wait_for(lambda: len(runs(flow)) == 24, 30, what="24 jobs")
    finally:
        for m in masters:
            m.kill_all()
    events = sorted([(r["start"], 1) for r in runs(flow)] + [(r["end"], -1) for r in runs(flow)])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most == 2, most                                   # never 3, and 2 at times
    assert sorted(r["n"] for r in runs(flow)) == list(range(24))
    assert int(rclient.get(TopicKeys("t", "cc").running) or 0) == 0


def test_a_killed_worker_gives_its_concurrency_slot_back(flow, rclient):
    (master,) = masters_on(flow, [{"topic": "cc", "consumer": "flow:run", "static_workers": 2,
                                   "concurrency": 1}], 1)
    keys = TopicKeys("t", "cc")
    with Producer(flow.redis_url, prefix="t") as p:
        p.push("cc", {"n": "hold", "hold": True})
        try:
            master.start()
            wait_for(lambda: rclient.get(keys.running) == b"1", 10, what="the slot taken")
            p.push_many("cc", [{"n": i} for i in range(3)])
            time.sleep(1.0)
            assert runs(flow) == []                          # the one slot is held
            busy = [w for w in master.workers() if w["state"] == "busy"]
            os.kill(busy[0]["pid"], signal.SIGKILL)
            wait_for(lambda: len(runs(flow)) == 4, 20, what="all four after the recovery")
            wait_for(lambda: rclient.get(keys.running) == b"0", 5, what="the slot free")
        finally:
            master.kill_all()
    assert sorted(map(str, (r["n"] for r in runs(flow)))) == ["0", "1", "2", "hold"]


def test_a_throttled_worker_does_not_spin_and_status_says_throttled(flow, procs, rclient):
    flow.write_config([{"topic": "slow", "consumer": "flow:run", "rate_limit": "1/m"}])
    with Producer(flow.redis_url, prefix="t") as p:
        p.push_many("slow", [{"n": i} for i in range(10)])
    procs.append(spawn_worker(flow, "slow"))
    wait_for(lambda: len(runs(flow)) == 1, 10, what="the one job the limit allows")
    time.sleep(1.0)
    rclient.config_resetstat()
    time.sleep(4.0)
    calls = sum(v["calls"] for v in rclient.info("commandstats").values())
    status = subprocess.run([sys.executable, "-m", "ssjobs", "status", "--json", "-c",
                             str(flow.config)], capture_output=True, text=True, timeout=30)
    assert calls <= 4 * 3 + 2, calls                         # a few commands a second at most
    assert len(runs(flow)) == 1
    assert rclient.llen(TopicKeys("t", "slow").ready) == 9  # held back, in order, not failed
    assert json.loads(status.stdout)["topics"]["slow"]["throttled"] is True


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"priority": 10}, "priority must be an integer 0..9"),
    ({"priority": -1}, "priority must be an integer 0..9"),
    ({"priority": "high"}, "priority must be an integer 0..9"),
    ({"unique_key": ""}, "unique_key must be a non-empty string"),
    ({"unique_key": 7}, "unique_key must be a non-empty string"),
    ({"unique_key": "k", "unique_for": 0}, "unique_for"),
    ({"max_retries": -1}, "max_retries must be an integer 0..1000"),
    ({"timeout": 0}, "timeout"),
])
def test_bad_push_options_raise_a_value_error_and_push_nothing(flow, rclient, options,
                                                                message):
    with Producer(flow.redis_url, prefix="t") as p, pytest.raises(ValueError, match=message):
        p.push("q", {"n": 1}, **options)
    assert rclient.keys("t:*") == []


def test_push_many_refuses_a_unique_key_and_from_config_refuses_an_unknown_topic(flow):
    flow.write_config([{"topic": "known", "consumer": "flow:run"}])
    with Producer.from_config(flow.config) as p:
        with pytest.raises(TypeError):
            p.push_many("known", [1, 2], unique_key="k")  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="unknown topic 'typo'.*declares known"):
            p.push("typo", 1)


def test_ssjobs_push_options_from_the_shell(flow, rclient):
    flow.write_config([{"topic": "sh", "consumer": "flow:run"}])

    def push(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "ssjobs", "push", "sh", *args, "-c",
                               str(flow.config)], capture_output=True, text=True, timeout=30,
                              input=stdin)

    keys = TopicKeys("t", "sh")
    first = push('{"n": 1}', "--priority", "3", "--unique-key", "one")
    priority_jobs = lambda: rclient.zcount(keys.delayed, "-inf", "(0")  # noqa: E731
    assert first.returncode == 0 and priority_jobs() == 1
    again = push('{"n": 2}', "--unique-key", "one")
    assert again.returncode == 0 and again.stdout.strip() == first.stdout.strip()
    assert "is held by job" in again.stderr and priority_jobs() == 1
    delayed = push('{"n": 3}', "--delay", "60", "--priority", "9")
    assert delayed.returncode == 0 and rclient.zcount(keys.delayed, 0, "+inf") == 1
    bad = push('{"n": 4}', "--priority", "10")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "0<=x<=9" in bad.stderr
    many = push("--unique-key", "two", stdin='{"a": 1}\n{"b": 2}\n')
    assert many.returncode == 1 and "--unique-key pushes one job, got 2" in many.stderr
    assert many.stderr.count("\n") == 1
