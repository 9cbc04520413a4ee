"""The Lua operations, driven directly against a real Redis."""
import time

import pytest

from ssjobs import envelope
from ssjobs.broker import Broker, connect
from ssjobs.producer import Producer


@pytest.fixture
def broker(redis_url):
    client = connect(redis_url)
    yield Broker(client, "t", "q")
    client.close()


def push(redis_url, payloads):
    with Producer(redis_url, prefix="t") as p:
        return p.push_many("q", payloads)


def test_fetch_moves_a_batch_into_the_workers_inflight_list_in_fifo_order(broker, redis_url):
    ids = push(redis_url, list(range(10)))
    got = broker.fetch("w1", 4)[0]
    assert [envelope.decode(r).id for r in got] == ids[:4]
    assert broker.client.llen(broker.keys.inflight("w1")) == 4
    assert broker.backlog() == 6


def test_fetch_on_empty_returns_nothing(broker):
    assert broker.fetch("w1", 10) == ([], None)


def test_wait_one_wakes_within_milliseconds_of_a_push(broker, redis_url):
    import threading
    got = {}

    def waiter():
        got["raw"] = broker.wait_one("w1", 2)
        got["t"] = time.time()

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.2)
    pushed_at = time.time()
    push(redis_url, ["hello"])
    th.join()
    assert envelope.decode(got["raw"]).payload == "hello"
    assert got["t"] - pushed_at < 0.05


def test_settle_acks_retries_deadletters_and_returns_unstarted_to_the_front(broker, redis_url):
    push(redis_url, list(range(6)))
    batch = broker.fetch("w1", 5)[0]
    jobs = [envelope.decode(r) for r in batch]
    retry_env = envelope.encode(jobs[1].id, "q", jobs[1].payload, attempts=1)
    dead_env = envelope.encode(jobs[2].id, "q", jobs[2].payload, attempts=4)
    broker.settle("w1", processed=1, failed=2, retries=[(time.time() - 1, retry_env)],
                  dead=[dead_env], unstarted=batch[3:])
    assert broker.client.llen(broker.keys.inflight("w1")) == 0
    counts = broker.counts()
    assert counts["processed"] == 1 and counts["failed"] == 2 and counts["retried"] == 1
    assert counts["dead"] == 1 and counts["delayed"] == 1
    # unstarted jobs 3, 4 are next in line, then 5; the due retry is promoted behind them
    order = [envelope.decode(r).payload for r in broker.fetch("w2", 10)[0]]
    assert order == [3, 4, 5, 1]


def test_fetch_on_empty_tells_when_the_next_delayed_job_is_due(broker):
    broker.client.zadd(broker.keys.delayed, {envelope.encode("a", "q", 1): 2e9})
    assert broker.fetch("w1", 10) == ([], 2e9)


def test_promote_moves_only_due_jobs(broker):
    now = time.time()
    broker.client.zadd(broker.keys.delayed, {envelope.encode("a", "q", 1): now - 1,
                                             envelope.encode("b", "q", 2): now + 60})
    assert broker.promote() == 1
    assert broker.backlog() == 1 and broker.client.zcard(broker.keys.delayed) == 1


def test_recover_requeues_in_order_and_charges_only_the_running_job(broker, redis_url):
    ids = push(redis_url, list(range(5)))
    broker.register_worker("w1", "node")
    broker.fetch("w1", 3)
    requeued, dead = broker.recover("w1", charged_id=ids[1], max_retries=3)
    assert (requeued, dead) == (3, 0)
    jobs = [envelope.decode(r) for r in broker.fetch("w2", 10)[0]]
    assert [j.id for j in jobs] == ids
    assert [j.attempts for j in jobs] == [0, 1, 0, 0, 0]
    assert jobs[1].payload == 1  # payload bytes untouched by the Lua rewrite
    assert broker.workers() == {}
    assert broker.counts()["failed"] == 1


def test_recover_deadletters_a_poison_job_past_max_retries(broker):
    env = envelope.encode("poison", "q", {"blob": b"\xff\x00"}, attempts=2,
                          headers={"keep": "me"})
    broker.client.lpush(broker.keys.inflight("w1"), env)
    assert broker.recover("w1", charged_id="poison", max_retries=2) == (0, 1)
    (raw,) = broker.client.lrange(broker.keys.dead, 0, -1)
    job = envelope.decode(raw)
    assert job.attempts == 3 and job.payload == {"blob": b"\xff\x00"}
    assert job.headers["keep"] == "me"
    assert job.headers["error"]["reason"] == "crashed"
    assert job.headers["error"]["worker"] == "w1"


def test_recover_leaves_garbage_for_the_worker_to_deadletter(broker):
    broker.client.lpush(broker.keys.inflight("w1"), b"\x97garbage", b"junk")
    assert broker.recover("w1", charged_id="x", max_retries=1) == (2, 0)
    assert broker.backlog() == 2


def test_settle_can_fetch_the_next_batch_in_the_same_round_trip(broker, redis_url):
    ids = push(redis_url, list(range(7)))
    first, _ = broker.fetch("w1", 3)
    nxt, due = broker.settle("w1", processed=3, failed=0, fetch_next=3)
    assert [envelope.decode(r).id for r in nxt] == ids[3:6] and due is None
    # the in-flight list now holds exactly the new batch
    assert sorted(broker.client.lrange(broker.keys.inflight("w1"), 0, -1)) == sorted(nxt)
    last, _ = broker.settle("w1", processed=3, failed=0, fetch_next=5)
    assert [envelope.decode(r).id for r in last] == ids[6:]
    assert broker.settle("w1", processed=1, failed=0, fetch_next=5) == ([], None)
    assert broker.counts()["processed"] == 7
