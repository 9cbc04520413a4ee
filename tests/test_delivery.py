"""The delivery guarantees under the faults production Redis sees every week: lost replies,
a container's PID-1 master restarting, a paused host, a crash in the middle of a batch, odd
values, consumers that dodge timeouts or fork (docs/design.md). Real masters and workers, a
real redis-server, and a proxy that loses replies on purpose (tests/faultproxy.py)."""
import collections
import os
import shutil
import signal
import subprocess
import sys
import time

import msgpack
import pytest
from conftest import Project, wait_for
from faultproxy import FaultProxy, is_command, runs_script
from masters import MasterProc, wait_gone

from ssjobs import envelope
from ssjobs.broker import TopicKeys
from ssjobs.errors import Retry
from ssjobs.producer import Producer
from ssjobs.runtime import children

CONSUMER = """
    import os, time
    import ssjobs
    OUT = os.environ["SSJOBS_TEST_OUT"]

    def _note(job):
        fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{job.id} {job.attempts} {os.getpid()}\\n".encode())
        os.close(fd)

    def run(job):
        p = job.payload
        if isinstance(p, dict):
            time.sleep(p.get("sleep", 0))
            if p.get("crash_first") and job.attempts == 0:
                os._exit(1)
            if p.get("crash"):
                os._exit(1)
        _note(job)

    def nan_retry(job):
        _note(job)
        raise ssjobs.Retry(delay=float("nan"))

    def inf_retry(job):
        _note(job)
        if job.attempts == 0:
            raise ssjobs.Retry(delay=float("inf"))

    def stubborn(job):
        _note(job)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                time.sleep(0.05)
            except ssjobs.JobTimeout:
                pass   # a consumer that swallows the soft timeout

    def forks(job):
        if os.fork() == 0:
            return       # the child forgets to _exit and returns into the worker's loop
        _note(job)
"""


@pytest.fixture
def kit(project, monkeypatch, tmp_path, redis_server):
    out = tmp_path / "out.txt"
    monkeypatch.setenv("SSJOBS_TEST_OUT", str(out))
    project.consumer("rec", CONSUMER)
    proxy = FaultProxy(redis_server.port)
    masters: list[MasterProc] = []
    yield project, out, proxy, masters
    for m in masters:
        m.kill_all()
    proxy.close()


def runs(out):
    if not out.exists():
        return []
    return [line.split() for line in out.read_text().splitlines()]


def counts(out):
    return collections.Counter(row[0] for row in runs(out))


def keys(topic="q"):
    return TopicKeys("t", topic)


def inflight_left(rclient):
    return sum(rclient.llen(k) for k in rclient.keys("t:{q}:inflight:*"))


def start_master(project, masters, jobs, *, url=None, **kw):
    if url is not None:
        project.redis_url = url
    project.write_config(jobs, **kw)
    m = MasterProc(project.config, project.data_dir)
    masters.append(m)
    m.start()
    return m


# -- lost replies --------------------------------------------------------------------------

def test_a_lost_settle_reply_loses_and_repeats_nothing(kit, rclient):
    project, out, proxy, masters = kit
    ids = Producer(project.redis_url, prefix="t").push_many("q", list(range(200)))
    proxy.drop_reply(runs_script("settle"), nth=3)
    proxy.drop_reply(runs_script("settle"), nth=5)
    start_master(project, masters, [{"topic": "q", "consumer": "rec:run", "batch_size": 10}],
                 url=proxy.url)
    wait_for(lambda: set(counts(out)) == set(ids), timeout=20, what="all 200 jobs")
    assert len(proxy.stats.dropped) == 2
    time.sleep(0.3)
    assert max(counts(out).values()) == 1            # none ran twice
    assert rclient.hget(keys().stats, "processed") == b"200"
    assert inflight_left(rclient) == 0 and rclient.llen(keys().ready) == 0


def test_a_lost_blocking_fetch_reply_loses_nothing(kit, rclient):
    project, out, proxy, masters = kit
    proxy.drop_reply(is_command("BLMOVE"), nth=2)   # a job moved, its reply lost
    start_master(project, masters, [{"topic": "q", "consumer": "rec:run"}], url=proxy.url)
    p = Producer(project.redis_url, prefix="t")
    ids = []
    for i in range(6):
        ids.append(p.push("q", i))
        wait_for(lambda: len(runs(out)) == len(ids), timeout=15, what=f"job {i}")
    assert [row[0] for row in runs(out)] == ids      # all six, once each, in order
    assert len(proxy.stats.dropped) == 1
    assert inflight_left(rclient) == 0


def test_a_push_whose_reply_is_lost_is_enqueued_once(kit, rclient):
    project, out, proxy, masters = kit
    proxy.drop_reply(runs_script("push"), nth=1)
    proxy.drop_reply(runs_script("push"), nth=3)
    with Producer(proxy.url, prefix="t") as p:
        first = p.push("q", 1)                 # lost reply, sent again
        second = p.push("q", 2, delay=60)
        ids = p.push_many("q", list(range(2500)))  # 3 chunks, the first one's reply lost
    assert len(proxy.stats.dropped) == 2
    ready = [envelope.decode(r).id for r in rclient.lrange(keys().ready, 0, -1)]
    assert sorted(ready) == sorted([first, *ids])
    assert rclient.zcard(keys().delayed) == 1 and second


def test_the_asyncio_producer_push_is_enqueued_once_after_a_lost_reply(kit, rclient):
    import asyncio

    from ssjobs.aio import AsyncProducer

    project, out, proxy, masters = kit
    proxy.drop_reply(runs_script("push"), nth=2)

    async def main():
        async with AsyncProducer(proxy.url, prefix="t") as p:
            return await asyncio.gather(*(p.push("q", i) for i in range(20)))

    ids = asyncio.run(main())
    assert len(proxy.stats.dropped) == 1
    ready = [envelope.decode(r).id for r in rclient.lrange(keys().ready, 0, -1)]
    assert sorted(ready) == sorted(ids)


def test_an_asyncio_push_many_whose_second_chunk_reply_is_lost_enqueues_each_job_once(
        kit, rclient):
    """The chunks are streamed down one connection: the link drops after Redis ran the
    second, and the whole call is sent again; each chunk's token makes its repeat a no-op."""
    import asyncio

    from ssjobs.aio import AsyncProducer

    project, out, proxy, masters = kit
    proxy.drop_reply(runs_script("push"), nth=2)

    async def main():
        async with AsyncProducer(proxy.url, prefix="t") as p:
            return await p.push_many("q", list(range(3500)))

    ids = asyncio.run(main())
    assert len(proxy.stats.dropped) == 1
    ready = [envelope.decode(r).id for r in rclient.lrange(keys().ready, 0, -1)]
    assert len(ready) == 3500 and sorted(ready) == sorted(ids)


# -- identities ------------------------------------------------------------------------------

@pytest.mark.skipif(os.getuid() != 0 or shutil.which("unshare") is None,
                    reason="a PID namespace needs root and unshare")
def test_a_pid_1_master_restarted_recovers_what_its_killed_workers_held(kit, rclient):
    project, out, proxy, masters = kit
    project.write_config([{"topic": "q", "consumer": "rec:run", "static_workers": 2,
                           "batch_size": 10}])
    ids = Producer(project.redis_url, prefix="t").push_many(
        "q", [{"sleep": 0.02, "n": i} for i in range(150)])

    def start_in_namespace():
        # --kill-child: SIGKILL to unshare kills its child, the namespace's PID 1, and with
        # it every process of the namespace (as when a container is killed)
        return subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable,
             "-m", "ssjobs", "start", "--foreground", "-c", str(project.config)],
            cwd=project.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def master_of(ns):
        return wait_for(lambda: [pid for pid, _ in children(ns.pid)], what="the PID-1 master")[0]

    first = start_in_namespace()
    try:
        wait_for(lambda: len(runs(out)) >= 20, timeout=20, what="jobs running")
        assert "(pid 1," in project.log_text()       # the master is PID 1 in its namespace
        master = master_of(first)
        doomed = [master, *(pid for pid, _ in children(master))]
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        assert wait_gone(doomed, 10) == []           # the master and its workers died
        assert inflight_left(rclient) > 0            # what they held is orphaned ...
        second = start_in_namespace()
        try:
            wait_for(lambda: set(counts(out)) == set(ids), timeout=30, what="every job")
            assert inflight_left(rclient) == 0       # ... and recovered by the next PID 1
            assert "previous master" in project.log_text()
            # only a job that was running at the kill may run twice (2 workers)
            assert sum(n - 1 for n in counts(out).values()) <= 2
        finally:
            try:
                os.kill(master_of(second), signal.SIGTERM)
                second.wait(30)
            finally:   # whatever happened: no master of this test may outlive it
                if second.poll() is None:
                    second.kill()       # --kill-child: the namespace goes with it
                    second.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)


# -- crashes ---------------------------------------------------------------------------------

def test_a_crash_in_the_middle_of_a_batch_reruns_only_the_running_job(kit, rclient):
    project, out, proxy, masters = kit
    payloads = [i for i in range(4001)]
    payloads[2000] = {"crash_first": True}
    ids = Producer(project.redis_url, prefix="t").push_many("q", payloads)
    start_master(project, masters, [{"topic": "q", "consumer": "rec:run", "batch_size": 100}])
    wait_for(lambda: set(counts(out)) == set(ids), timeout=30, what="all 4001 jobs")
    time.sleep(0.3)
    seen = counts(out)
    assert {n for job_id, n in seen.items() if job_id != ids[2000]} == {1}
    assert seen[ids[2000]] == 1                    # it ran to the end once: its second try
    attempts = {row[0]: int(row[1]) for row in runs(out)}
    assert attempts[ids[2000]] == 1                # charged for the crash
    assert rclient.hget(keys().stats, "processed") == b"4001"
    assert inflight_left(rclient) == 0


def test_a_poison_job_with_a_long_foreign_id_is_charged_and_deadlettered(kit, rclient):
    project, out, proxy, masters = kit
    long_id = "urn:uuid:" + "6f1c1b0e-7a51-4d4a-9a4e-2b4f7d2c9e11" * 3   # 117 bytes
    env = msgpack.packb([1, long_id, "q", 0, time.time(), {}, {"crash": True}])
    rclient.lpush(keys().ready, env)
    ok = Producer(project.redis_url, prefix="t").push("q", "fine")
    start_master(project, masters, [{"topic": "q", "consumer": "rec:run", "max_retries": 2}])
    wait_for(lambda: rclient.llen(keys().dead) == 1, timeout=30, what="the poison job dead")
    dead = envelope.decode(rclient.lindex(keys().dead, 0))
    assert dead.id == long_id and dead.attempts == 3
    assert dead.headers["error"]["reason"] == "crashed"
    wait_for(lambda: ok in counts(out))


# -- hosts -----------------------------------------------------------------------------------

def _pids(m):
    return [m.pid] + [w["pid"] for w in m.workers()]


def test_a_paused_host_is_fenced_rejoins_and_nothing_is_lost_or_orphaned(kit, rclient,
                                                                         tmp_path):
    project, out, proxy, masters = kit
    (tmp_path / "other").mkdir(exist_ok=True)
    other = Project(tmp_path / "other", project.redis_url)
    other.consumer("rec", CONSUMER)
    job = [{"topic": "q", "consumer": "rec:run", "static_workers": 2, "batch_size": 5}]
    a = start_master(project, masters, job, process="heartbeat_ttl = 2")
    start_master(other, masters, job, process="heartbeat_ttl = 2")
    p = Producer(project.redis_url, prefix="t")
    ids = p.push_many("q", [{"sleep": 0.01, "n": i} for i in range(3000)])
    wait_for(lambda: len(runs(out)) > 200, timeout=20)
    paused = _pids(a)
    for pid in paused:          # the whole host stops: master and workers
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: "is gone (heartbeat expired)" in other.log_text(), timeout=20,
                 what="b recovers a's jobs")
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: "registers again" in project.log_text(), timeout=20, what="a rejoins")
    assert "heartbeat had expired" in project.log_text()
    wait_for(lambda: len(set(counts(out))) > 2500, timeout=60)
    a.kill_all()                # then it dies for real: b picks up its jobs again
    wait_for(lambda: set(counts(out)) == set(ids), timeout=60, what="every job")
    wait_for(lambda: inflight_left(rclient) == 0, timeout=20, what="no orphaned list")
    duplicates = sum(n - 1 for n in counts(out).values())
    # at most what a's two workers held when it paused and when it died: 2 batches each
    assert duplicates <= 2 * 2 * 5, duplicates


def test_a_stop_longer_than_the_heartbeat_ttl_is_not_a_dead_host(kit, rclient, tmp_path):
    project, out, proxy, masters = kit
    (tmp_path / "other").mkdir(exist_ok=True)
    other = Project(tmp_path / "other", project.redis_url)
    other.consumer("rec", CONSUMER)
    job = [{"topic": "q", "consumer": "rec:run"}]
    a = start_master(project, masters, job, process="heartbeat_ttl = 2")
    job_id = Producer(project.redis_url, prefix="t").push("q", {"sleep": 6})
    wait_for(lambda: a.workers() and a.workers()[0]["state"] == "busy", timeout=10)
    b = start_master(other, masters, job, process="heartbeat_ttl = 2")
    assert a.stop(timeout=30) == 0            # a 6 s job finishes during the stop
    time.sleep(1)
    assert counts(out) == {job_id: 1}
    assert "is gone" not in other.log_text()
    assert b.proc.poll() is None


# -- timeouts and forks ------------------------------------------------------------------

def test_a_consumer_that_swallows_the_soft_timeout_is_killed_and_charged(kit, rclient):
    project, out, proxy, masters = kit
    start_master(project, masters, [{"topic": "q", "consumer": "rec:stubborn",
                                     "job_timeout": 1, "max_retries": 0}])
    job_id = Producer(project.redis_url, prefix="t").push("q", 1)
    wait_for(lambda: rclient.llen(keys().dead) == 1, timeout=20, what="hard kill")
    dead = envelope.decode(rclient.lindex(keys().dead, 0))
    assert dead.id == job_id and dead.headers["error"]["reason"] == "crashed"
    assert "job ran past job_timeout=1.0s; killing it" in project.log_text()


def test_a_process_forked_by_the_consumer_never_runs_or_settles_a_job(kit, rclient):
    project, out, proxy, masters = kit
    start_master(project, masters, [{"topic": "q", "consumer": "rec:forks", "batch_size": 10}])
    ids = Producer(project.redis_url, prefix="t").push_many("q", list(range(50)))
    wait_for(lambda: set(counts(out)) == set(ids), timeout=20)
    time.sleep(0.5)
    assert set(counts(out).values()) == {1}
    assert rclient.hget(keys().stats, "processed") == b"50"
    assert "returned into the worker loop" in project.log_text()
    assert inflight_left(rclient) == 0


# -- odd values ------------------------------------------------------------------------------

def test_odd_retry_delays_never_break_a_settle(kit, rclient):
    project, out, proxy, masters = kit
    start_master(project, masters, [
        {"topic": "q", "consumer": "rec:nan_retry", "max_retries": 1, "retry_backoff": 0.1},
        {"topic": "inf", "consumer": "rec:inf_retry"}])
    nan_id = Producer(project.redis_url, prefix="t").push("q", 1)
    inf_id = Producer(project.redis_url, prefix="t").push("inf", 1)
    # Retry(delay=nan) is refused where it is raised: an ordinary failure, retried
    wait_for(lambda: rclient.llen(keys().dead) == 1, timeout=15)
    dead = envelope.decode(rclient.lindex(keys().dead, 0))
    assert dead.id == nan_id and dead.headers["error"]["type"] == "ValueError"
    # Retry(delay=inf) waits a year, not forever and not never
    wait_for(lambda: rclient.zcard(TopicKeys("t", "inf").delayed) == 1, timeout=10)
    (_, due), = rclient.zrange(TopicKeys("t", "inf").delayed, 0, 0, withscores=True)
    assert 360 * 86400 < due - time.time() < 367 * 86400
    assert counts(out) == {nan_id: 2, inf_id: 1}
    assert all(w["pid"] for w in masters[0].workers())


def test_odd_delays_at_push_are_refused_with_a_clear_error(redis_url):
    with Producer(redis_url, prefix="t") as p:
        for bad in (float("nan"), float("inf"), 400 * 86400, "10"):
            with pytest.raises(ValueError, match="delay"):
                p.push("q", 1, delay=bad)
        assert p.queue_size("q") == 0
        p.push("q", 1, delay=-5)        # the past is now
        assert p.queue_size("q") == 1
    assert Retry(delay=-3).delay == 0.0
    with pytest.raises(ValueError):
        Retry(delay=float("nan"))


def test_an_attempts_counter_at_its_limit_is_deadlettered_as_malformed(kit, rclient):
    project, out, proxy, masters = kit
    rclient.lpush(keys().ready, msgpack.packb([1, "big", "q", 2**64 - 1, 1.0, {}, None]))
    ok = Producer(project.redis_url, prefix="t").push("q", 1)
    m = start_master(project, masters, [{"topic": "q", "consumer": "rec:run"}])
    wait_for(lambda: rclient.llen(keys().dead) == 1 and ok in counts(out), timeout=15)
    dead = envelope.decode(rclient.lindex(keys().dead, 0))
    assert dead.headers["error"]["reason"] == "malformed"
    pids = {w["pid"] for w in m.workers()}
    time.sleep(1)
    assert {w["pid"] for w in m.workers()} == pids   # the worker never crashed


def test_the_idle_cost_stays_low(kit, rclient):
    project, out, proxy, masters = kit
    start_master(project, masters, [{"topic": "q", "consumer": "rec:run",
                                     "static_workers": 10}])
    time.sleep(1.5)
    rclient.config_resetstat()
    time.sleep(5)
    calls = sum(v["calls"] for v in rclient.info("commandstats").values())
    # 10 idle workers and their master, commands inside scripts included: the master's
    # own ~10/s (heartbeat, promote, backlog, orphan scan, status snapshot) plus well under
    # one a second per worker (bench: 100 idle workers cost ~80/s)
    assert calls / 5 < 10 + 10 * 1.0, calls
