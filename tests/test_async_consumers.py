"""``async def`` consumers: awaited on one event loop per worker, job_timeout applied, and
with ``concurrency_per_worker`` several jobs of a batch at once (real master, real Redis)."""
import time

import pytest
from conftest import wait_for
from masters import MasterProc

from ssjobs import envelope
from ssjobs.broker import TopicKeys
from ssjobs.producer import Producer

CONSUMER = """
    import asyncio, os, time
    OUT = os.environ["SSJOBS_TEST_OUT"]
    running = 0

    def _note(text):
        fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (text + "\\n").encode())
        os.close(fd)

    async def run(job):
        global running
        running += 1
        _note(f"start {job.id} {running} {time.time()}")
        await asyncio.sleep(job.payload.get("sleep", 0))
        running -= 1
        if job.payload.get("fail"):
            return False
        _note(f"done {job.id}")

    class Session:
        async def setup(self):
            self.opened = True
            _note("setup")
        async def consume(self, job):
            await asyncio.sleep(0)
            _note(f"done {job.id} {self.opened}")
        async def teardown(self):
            _note("teardown")
"""


@pytest.fixture
def kit(project, monkeypatch, tmp_path):
    out = tmp_path / "out.txt"
    monkeypatch.setenv("SSJOBS_TEST_OUT", str(out))
    project.consumer("aio", CONSUMER)
    masters = []

    def start(jobs):
        project.write_config(jobs)
        m = MasterProc(project.config, project.data_dir)
        masters.append(m)
        m.start()
        return m

    yield project, out, start
    for m in masters:
        m.kill_all()


def lines(out, word):
    return [line.split() for line in out.read_text().splitlines()
            if line.startswith(word)] if out.exists() else []


def test_an_async_consumer_runs_every_job_and_counts_outcomes(kit, rclient):
    project, out, start = kit
    start([{"topic": "q", "consumer": "aio:run", "max_retries": 0}])
    with Producer(project.redis_url, prefix="t") as p:
        ids = p.push_many("q", [{"n": i} for i in range(30)])
        bad = p.push("q", {"fail": True})
    wait_for(lambda: len(lines(out, "done")) == 30 and rclient.llen(TopicKeys("t", "q").dead),
             what="30 done, 1 dead")
    assert {row[1] for row in lines(out, "done")} == set(ids)
    stats = rclient.hgetall(TopicKeys("t", "q").stats)
    assert stats[b"processed"] == b"30" and stats[b"failed"] == b"1"
    dead = envelope.decode(rclient.lindex(TopicKeys("t", "q").dead, 0))
    assert dead.id == bad and dead.headers["error"]["type"] == "ReturnedFalse"


def test_concurrency_per_worker_runs_that_many_jobs_of_a_batch_at_once(kit, rclient):
    project, out, start = kit
    start([{"topic": "q", "consumer": "aio:run", "concurrency_per_worker": 5,
            "batch_size": 10}])
    with Producer(project.redis_url, prefix="t") as p:
        p.push("q", {"sleep": 0})  # teaches the worker the job time: the next batch is big
        wait_for(lambda: lines(out, "done"))
        began = time.time()
        p.push_many("q", [{"sleep": 0.5}] * 10)
    wait_for(lambda: len(lines(out, "done")) == 11, timeout=20)
    took = time.time() - began
    overlap = max(int(row[2]) for row in lines(out, "start"))
    assert overlap == 5                       # never more than concurrency_per_worker ...
    assert took < 3.5, took                   # ... and not one after the other (5 s)
    assert rclient.hget(TopicKeys("t", "q").stats, "processed") == b"11"


def test_job_timeout_applies_to_an_async_job(kit, rclient):
    project, out, start = kit
    start([{"topic": "q", "consumer": "aio:run", "job_timeout": 1, "max_retries": 0}])
    job_id = Producer(project.redis_url, prefix="t").push("q", {"sleep": 30})
    wait_for(lambda: rclient.llen(TopicKeys("t", "q").dead), timeout=10)
    dead = envelope.decode(rclient.lindex(TopicKeys("t", "q").dead, 0))
    assert dead.id == job_id and dead.headers["error"]["type"] == "JobTimeout"
    assert dead.headers["error"]["reason"] == "failed"     # the soft timeout, not a kill


def test_an_async_class_consumer_has_async_setup_and_teardown(kit, rclient):
    project, out, start = kit
    m = start([{"topic": "q", "consumer": "aio:Session"}])
    Producer(project.redis_url, prefix="t").push_many("q", [1, 2, 3])
    wait_for(lambda: len(lines(out, "done")) == 3)
    assert all(row[2] == "True" for row in lines(out, "done"))   # setup() ran first
    assert m.stop() == 0
    assert lines(out, "setup") and lines(out, "teardown")
