"""One worker process, run alone (python -m ssjobs.worker), against a real Redis."""
import os
import signal
import time

import pytest
from conftest import spawn_worker, wait_for

from ssjobs import envelope
from ssjobs.broker import Broker, TopicKeys, connect
from ssjobs.producer import Producer

RECORDER = """
    import os, time
    OUT = os.environ.get("SSJOBS_TEST_OUT")

    def record(job):
        with open(OUT, "a") as f:
            f.write(f"{job.id} {job.attempts} {os.getpid()}\\n")
        p = job.payload
        if isinstance(p, dict):
            time.sleep(p.get("sleep", 0))
            if p.get("fail"):
                raise ValueError("asked to fail")
            if p.get("false"):
                return False
            if p.get("reject"):
                import ssjobs
                raise ssjobs.Reject("rejected on purpose")
            if p.get("retry"):
                import ssjobs
                raise ssjobs.Retry(delay=0.2)

    class Stateful:
        def setup(self):
            self.n = 0
        def consume(self, job):
            self.n += 1
            with open(OUT, "a") as f:
                f.write(f"{job.id} {self.n} {os.getpid()}\\n")
        def teardown(self):
            with open(OUT + ".teardown", "w") as f:
                f.write(str(self.n))
"""


@pytest.fixture
def setup(project, monkeypatch, tmp_path):
    out = tmp_path / "out.txt"
    monkeypatch.setenv("SSJOBS_TEST_OUT", str(out))
    project.consumer("rec", RECORDER)
    return project, out


def handled(out):
    if not out.exists():
        return []
    return [line.split() for line in out.read_text().splitlines()]


def keys(topic="q"):
    return TopicKeys("t", topic)


def test_jobs_flow_in_fifo_order_and_are_acked(setup, procs, rclient):
    project, out = setup
    project.write_config([{"topic": "q", "consumer": "rec:record", "batch_size": 10}])
    ids = Producer(project.redis_url, prefix="t").push_many("q", list(range(200)))
    procs.append(spawn_worker(project, "q"))
    wait_for(lambda: len(handled(out)) == 200, what="200 jobs handled")
    assert [row[0] for row in handled(out)] == ids
    wait_for(lambda: rclient.hget(keys().stats, "processed") == b"200")
    assert rclient.llen(keys().ready) == 0
    assert not rclient.keys("t:{q}:inflight:*")


def test_failures_retry_with_backoff_then_deadletter(setup, procs, rclient):
    project, out = setup
    project.write_config([{"topic": "q", "consumer": "rec:record", "max_retries": 2,
                           "retry_backoff": 0.1}])
    p = Producer(project.redis_url, prefix="t")
    fail_id = p.push("q", {"fail": True})
    false_id = p.push("q", {"false": True})
    reject_id = p.push("q", {"reject": True})
    procs.append(spawn_worker(project, "q"))
    wait_for(lambda: rclient.llen(keys().dead) == 3, timeout=15, what="3 dead letters")
    runs = [row[0] for row in handled(out)]
    assert runs.count(fail_id) == 3 and runs.count(false_id) == 3  # 1 + max_retries
    assert runs.count(reject_id) == 1
    dead = {envelope.decode(r).id: envelope.decode(r) for r in rclient.lrange(keys().dead, 0, -1)}
    assert dead[fail_id].attempts == 3
    assert dead[fail_id].headers["error"]["type"] == "ValueError"
    assert "asked to fail" in dead[fail_id].headers["error"]["traceback"]
    assert dead[false_id].headers["error"]["type"] == "ReturnedFalse"
    assert dead[reject_id].headers["error"]["reason"] == "rejected"
    stats = rclient.hgetall(keys().stats)
    assert stats[b"failed"] == b"7" and stats[b"dead"] == b"3" and stats[b"retried"] == b"4"
    log = project.log_text()
    assert log.count(f"job {fail_id}") == 3  # every failed run logged once


def test_explicit_retry_uses_its_delay(setup, procs, rclient):
    project, out = setup
    project.write_config([{"topic": "q", "consumer": "rec:record", "max_retries": 1,
                           "retry_backoff": 60}])
    job_id = Producer(project.redis_url, prefix="t").push("q", {"retry": True})
    procs.append(spawn_worker(project, "q"))
    # retry_backoff is 60 s, but Retry(delay=0.2) asks for 0.2 s
    wait_for(lambda: rclient.llen(keys().dead) == 1, timeout=10)
    assert [row[0] for row in handled(out)] == [job_id, job_id]


def test_garbage_is_deadlettered_as_malformed_and_the_worker_carries_on(setup, procs, rclient):
    project, out = setup
    project.write_config([{"topic": "q", "consumer": "rec:record"}])
    p = Producer(project.redis_url, prefix="t")
    first = p.push("q", 1)
    rclient.lpush(keys().ready, b"\x00garbage", b"\x97\x01\x02", b"")
    last = p.push("q", 2)
    procs.append(spawn_worker(project, "q"))
    wait_for(lambda: len(handled(out)) == 2 and rclient.llen(keys().dead) == 3)
    assert [row[0] for row in handled(out)] == [first, last]
    reasons = {envelope.decode(r).headers["error"]["reason"]
               for r in rclient.lrange(keys().dead, 0, -1)}
    assert reasons == {"malformed"}
    raw = {envelope.decode(r).payload for r in rclient.lrange(keys().dead, 0, -1)}
    assert raw == {b"\x00garbage", b"\x97\x01\x02", b""}
    assert procs[0].poll() is None


def test_sigkill_mid_batch_then_recovery_requeues_exactly_its_inflight(setup, procs, rclient):
    project, out = setup
    project.write_config([{"topic": "q", "consumer": "rec:record", "batch_size": 20}])
    ids = Producer(project.redis_url, prefix="t").push_many(
        "q", [{"sleep": 0.05, "n": i} for i in range(50)])
    worker = spawn_worker(project, "q")
    procs.append(worker)
    wait_for(lambda: len(handled(out)) >= 5)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(5)
    (inflight_key,) = rclient.keys("t:{q}:inflight:*")
    inflight = [envelope.decode(r).id for r in rclient.lrange(inflight_key, 0, -1)]
    assert 0 < len(inflight) <= 20
    ready_before = rclient.llen(keys().ready)
    name = inflight_key.decode().split(":inflight:", 1)[1]
    broker = Broker(connect(project.redis_url), "t", "q")
    requeued, dead, dropped = broker.recover(name, None, max_retries=3)
    assert (requeued, dead, dropped) == (len(inflight), 0, 0)
    assert rclient.llen(keys().ready) == ready_before + len(inflight)
    # nothing lost: everything not yet handled is in ready, in FIFO order
    done = {row[0] for row in handled(out)}
    remaining = [envelope.decode(r).id for r in reversed(rclient.lrange(keys().ready, 0, -1))]
    assert set(remaining) | done == set(ids)
    assert remaining == [i for i in ids if i in set(remaining)]


def test_sigterm_finishes_current_job_and_returns_prefetched_to_the_front(setup, procs,
                                                                          rclient):
    project, out = setup
    project.write_config([{"topic": "q", "consumer": "rec:record", "batch_size": 50}])
    ids = Producer(project.redis_url, prefix="t").push_many(
        "q", [{"sleep": 0.1, "n": i} for i in range(30)])
    worker = spawn_worker(project, "q")
    procs.append(worker)
    wait_for(lambda: len(handled(out)) >= 2)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    done = [row[0] for row in handled(out)]
    assert done == ids[:len(done)] and len(done) < 30
    remaining = [envelope.decode(r).id for r in reversed(rclient.lrange(keys().ready, 0, -1))]
    assert remaining == ids[len(done):]  # the unstarted, at the front, in order
    assert not rclient.keys("t:{q}:inflight:*")
    assert rclient.hget(keys().stats, "processed") == str(len(done)).encode()


def test_class_consumer_setup_teardown_and_count_limit(setup, procs, rclient):
    project, out = setup
    project.write_config([{"topic": "q", "consumer": "rec:Stateful", "batch_size": 100,
                           "max_consumer_count": 50}])
    Producer(project.redis_url, prefix="t").push_many("q", list(range(120)))
    worker = spawn_worker(project, "q")
    procs.append(worker)
    assert worker.wait(15) == 10  # EXIT_RECYCLE_COUNT
    assert len(handled(out)) == 50  # exactly max_consumer_count, whatever batch_size
    assert (out.parent / (out.name + ".teardown")).read_text() == "50"
    assert rclient.llen(keys().ready) == 70


def test_idle_worker_blocks_instead_of_polling(setup, procs, rclient):
    project, out = setup
    project.write_config([{"topic": "q", "consumer": "rec:record"}])
    procs.append(spawn_worker(project, "q"))
    time.sleep(1.0)
    rclient.config_resetstat()
    time.sleep(3.0)
    calls = sum(v["calls"] for k, v in rclient.info("commandstats").items())
    assert calls <= 3 * 1.5 + 3, calls  # ~1 blocking wait per second (+ this INFO)
    started = time.time()
    Producer(project.redis_url, prefix="t").push("q", 1)
    wait_for(lambda: handled(out), interval=0.001)
    assert time.time() - started < 0.1


def test_delayed_job_runs_after_its_delay(setup, procs):
    project, out = setup
    project.write_config([{"topic": "q", "consumer": "rec:record"}])
    procs.append(spawn_worker(project, "q"))
    Producer(project.redis_url, prefix="t").push("q", 1, delay=1.5)
    pushed = time.time()
    wait_for(lambda: handled(out), timeout=10)
    assert time.time() - pushed >= 1.4


def test_redis_restart_under_a_running_worker(setup, procs, rclient, redis_server):
    project, out = setup
    project.write_config([{"topic": "q", "consumer": "rec:record"}])
    worker = spawn_worker(project, "q")
    procs.append(worker)
    Producer(project.redis_url, prefix="t").push("q", 1)
    wait_for(lambda: len(handled(out)) == 1)
    redis_server.restart(down_for=2.0)
    p = Producer(project.redis_url, prefix="t")
    p.push_many("q", [2, 3])
    wait_for(lambda: len(handled(out)) == 3, timeout=15, what="worker resumed")
    assert worker.poll() is None
    log = project.log_text()
    assert log.count("'redis' unavailable") == 1
    assert log.count("'redis' recovered after") == 1


def test_unimportable_consumer_exits_with_its_own_status(setup, procs):
    project, out = setup
    project.write_config([{"topic": "q", "consumer": "nope:missing"}])
    worker = spawn_worker(project, "q")
    procs.append(worker)
    assert worker.wait(10) == 3
    assert "nope" in project.log_text()
