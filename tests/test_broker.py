"""The Lua operations, driven directly against a real Redis: what each does, and that each
is safe to send twice (docs/design.md)."""
import threading
import time

import pytest

from ssjobs import envelope
from ssjobs.broker import Broker, Outcomes, connect
from ssjobs.errors import BrokerError, Fenced
from ssjobs.producer import Producer
from ssjobs.scoreboard import BatchPosition


@pytest.fixture
def broker(redis_url):
    # a topic no other test module uses: what an earlier module's masters leave running
    # for a moment must not take these jobs
    client = connect(redis_url)
    b = Broker(client, "t", "bq")
    b.register_worker("w1")
    yield b
    client.close()


def push(redis_url, payloads):
    with Producer(redis_url, prefix="t") as p:
        return p.push_many("bq", payloads)


def ids_of(raws):
    return [envelope.decode(r).id for r in raws]


def inflight(broker, worker="w1"):
    """The worker's in-flight list, oldest first."""
    return list(reversed(broker.client.lrange(broker.keys.inflight(worker), 0, -1)))


def test_a_fetch_moves_a_batch_into_the_workers_inflight_list_in_fifo_order(broker, redis_url):
    ids = push(redis_url, list(range(10)))
    got = broker.settle("w1", 0, take=4).jobs
    assert ids_of(got) == ids[:4] and inflight(broker) == got
    assert broker.backlog() == 6
    assert broker.client.hget(broker.keys.workers, "w1") == b"1"


def test_a_fetch_on_empty_returns_nothing_or_when_the_next_delayed_job_is_due(broker):
    assert broker.settle("w1", 0, take=10) == ([], None, None)
    broker.client.zadd(broker.keys.delayed, {envelope.encode("a", "bq", 1): 2e9})
    assert broker.settle("w1", 1, take=10) == ([], 2e9, None)


def test_settle_drops_what_is_done_and_takes_the_next_batch_in_one_call(broker, redis_url):
    ids = push(redis_url, list(range(7)))
    broker.settle("w1", 0, take=3)
    nxt = broker.settle("w1", 1, done=3, outcomes=Outcomes(processed=3), take=3).jobs
    assert ids_of(nxt) == ids[3:6] and inflight(broker) == nxt
    last = broker.settle("w1", 2, done=3, outcomes=Outcomes(processed=3), take=5).jobs
    assert ids_of(last) == ids[6:]
    settled = broker.settle("w1", 3, done=1, outcomes=Outcomes(processed=1), take=5)
    assert settled == ([], None, None)
    assert broker.counts()["processed"] == 7


def test_a_repeated_settle_returns_the_same_batch_and_drops_nothing(broker, redis_url):
    """The reply of a settle was lost; the worker sends it again."""
    ids = push(redis_url, list(range(10)))
    broker.settle("w1", 0, take=3)
    first = broker.settle("w1", 1, done=3, outcomes=Outcomes(processed=3), take=3)
    again = broker.settle("w1", 1, done=3, outcomes=Outcomes(processed=3), take=3)
    assert again == first and ids_of(first.jobs) == ids[3:6]
    assert inflight(broker) == first.jobs          # batch 2 intact
    assert broker.backlog() == 4                   # nothing taken twice
    assert broker.counts()["processed"] == 3       # counted once


def test_a_stale_settle_is_refused_and_changes_nothing(broker, redis_url):
    push(redis_url, list(range(10)))
    broker.settle("w1", 0, take=3)
    broker.settle("w1", 1, done=3, take=3)
    broker.settle("w1", 2, done=3, take=3)
    before = inflight(broker)
    with pytest.raises(Fenced):  # a delayed copy of the settle of batch 1
        broker.settle("w1", 1, done=3, take=3)
    assert inflight(broker) == before and broker.backlog() == 1


def test_what_a_lost_blocking_fetch_moved_comes_back_with_the_next_settle(broker, redis_url):
    ids = push(redis_url, ["a", "b"])
    moved = broker.wait_one("w1", 1)   # its reply is lost: the worker never saw "a"
    assert ids_of([moved]) == ids[:1]
    got = broker.settle("w1", 0, take=5).jobs
    assert ids_of(got) == ids            # "a" first, then the job just taken
    assert inflight(broker) == got


def test_the_blocking_fetch_wakes_within_milliseconds_of_a_push(broker, redis_url):
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
    assert got["t"] - pushed_at < 0.25   # not the 2 s timeout: woken by the push


def test_a_failure_is_settled_alone_and_the_rest_stays_held(broker, redis_url):
    ids = push(redis_url, list(range(5)))
    batch = broker.settle("w1", 0, take=5).jobs
    job = envelope.decode(batch[1])
    job.attempts = 1
    retry = envelope.encode_job(job)
    # jobs 0 (ok) and 1 (failed) are done; 2..4 are still the worker's
    got = broker.settle("w1", 1, done=2, held=3,
                        outcomes=Outcomes(processed=1, failed=1,
                                          retries=[(time.time() + 60, retry)]))
    assert got.jobs == []
    assert ids_of(inflight(broker)) == ids[2:]
    counts = broker.counts()
    assert (counts["processed"], counts["failed"], counts["retried"], counts["delayed"]) == \
        (1, 1, 1, 1)


def test_a_stopping_worker_gives_back_what_it_did_not_begin_in_order(broker, redis_url):
    ids = push(redis_url, list(range(6)))
    broker.settle("w1", 0, take=5)
    broker.settle("w1", 1, done=2, held=3, give_back=True, outcomes=Outcomes(processed=2))
    assert inflight(broker) == []
    order = ids_of(broker.settle("w1", 2, take=10).jobs)
    assert order == ids[2:]   # the unstarted 2, 3, 4 first, then 5


def test_a_retry_due_time_that_is_not_finite_is_refused_before_anything_changes(broker,
                                                                                redis_url):
    push(redis_url, list(range(3)))
    batch = broker.settle("w1", 0, take=3).jobs
    with pytest.raises(BrokerError, match="finite"):
        broker.settle("w1", 1, done=3, outcomes=Outcomes(failed=1,
                                                        retries=[(float("nan"), batch[0])]))
    assert inflight(broker) == batch and broker.counts()["delayed"] == 0


def test_a_recovered_worker_is_fenced(broker, redis_url):
    ids = push(redis_url, list(range(4)))
    broker.settle("w1", 0, take=2)
    assert broker.recover("w1", None) == (2, 0, 0)   # its host was presumed dead
    with pytest.raises(Fenced):   # it was alive after all: its settle is refused
        broker.settle("w1", 1, done=2, take=2)
    assert broker.backlog() == 4 and inflight(broker) == []
    recovered = [envelope.decode(r) for r in broker.client.lrange(broker.keys.ready, 0, -1)]
    assert [j.id for j in recovered][::-1] == ids and {j.attempts for j in recovered} == {0}


def test_recover_with_the_slot_position_drops_the_done_and_charges_only_the_running(broker,
                                                                                  redis_url):
    ids = push(redis_url, list(range(6)))
    broker.settle("w1", 0, take=5)
    # the worker finished jobs 0 and 1 and died while running job 2
    assert broker.recover("w1", BatchPosition(1, 2, 1), max_retries=3) == (3, 0, 2)
    jobs = [envelope.decode(r) for r in broker.client.lrange(broker.keys.ready, 0, -1)][::-1]
    assert [j.id for j in jobs] == ids[2:]
    assert [j.attempts for j in jobs] == [1, 0, 0, 0]
    assert jobs[0].payload == 2   # payload bytes untouched by the Lua rewrite
    counts = broker.counts()
    assert (counts["processed"], counts["failed"]) == (2, 1)
    assert broker.workers() == []
    assert broker.recover("w1", BatchPosition(1, 2, 1)) == (0, 0, 0)   # safe twice


def test_recover_after_a_settle_the_slot_never_saw_requeues_all_uncharged(broker, redis_url):
    ids = push(redis_url, list(range(4)))
    broker.settle("w1", 0, take=2)
    broker.settle("w1", 1, done=2, take=2)   # ran; the worker died before reading the reply
    assert broker.recover("w1", BatchPosition(1, 2, 1)) == (2, 0, 0)
    got = [envelope.decode(r) for r in broker.client.lrange(broker.keys.ready, 0, -1)][::-1]
    assert [j.id for j in got] == ids[2:] and [j.attempts for j in got] == [0, 0]


def test_recover_deadletters_a_poison_job_past_max_retries(broker):
    env = envelope.encode("poison", "bq", {"blob": b"\xff\x00"}, attempts=2,
                          headers={"keep": "me"})
    broker.client.lpush(broker.keys.inflight("w1"), env)
    assert broker.recover("w1", BatchPosition(0, 0, 1), max_retries=2) == (0, 1, 0)
    (raw,) = broker.client.lrange(broker.keys.dead, 0, -1)
    job = envelope.decode(raw)
    assert job.attempts == 3 and job.payload == {"blob": b"\xff\x00"}
    assert job.headers["keep"] == "me"
    assert job.headers["error"]["reason"] == "crashed"
    assert job.headers["error"]["worker"] == "w1"


def test_recover_leaves_garbage_for_the_worker_to_deadletter(broker):
    broker.client.lpush(broker.keys.inflight("w1"), b"\x97garbage", b"junk")
    assert broker.recover("w1", BatchPosition(0, 0, 1), max_retries=1) == (2, 0, 0)
    assert broker.backlog() == 2


def test_promote_moves_only_due_jobs(broker):
    now = time.time()
    broker.client.zadd(broker.keys.delayed, {envelope.encode("a", "bq", 1): now - 1,
                                             envelope.encode("b", "bq", 2): now + 60})
    assert broker.promote() == 1
    assert broker.backlog() == 1 and broker.client.zcard(broker.keys.delayed) == 1


def test_a_push_sent_twice_under_one_token_enqueues_once(broker, redis_url):
    from ssjobs.producer import PUSH_SCRIPT, push_call, push_options

    script = broker.client.register_script(PUSH_SCRIPT)
    env = envelope.encode("id-1", "bq", 1)
    keys, args = push_call(broker.keys, "tok", "id-1", [env], time.time())
    assert script(keys=keys, args=args) == [1, b""]
    assert script(keys=keys, args=args) == [0, b""]      # the retry after a lost reply
    assert broker.backlog() == 1
    keys, args = push_call(broker.keys, "tok", "id-2", [env], time.time(),
                           push_options(delay=30))
    assert script(keys=keys, args=args) == [1, b""]      # the token's next push goes through
    assert broker.counts()["delayed"] == 1


def test_a_push_refused_by_a_held_unique_key_leaves_its_token_as_it_was(broker):
    from ssjobs.producer import PUSH_SCRIPT, push_call, push_options

    script = broker.client.register_script(PUSH_SCRIPT)
    unique = push_options(unique_key="report:7")
    first = push_call(broker.keys, "a", "id-1", [envelope.encode("id-1", "bq", 1)], time.time(),
                      unique)
    assert script(*first) == [1, b""]
    before = push_call(broker.keys, "tok", "id-2", [envelope.encode("id-2", "bq", 2)],
                       time.time())
    assert script(*before) == [1, b""]
    held = push_call(broker.keys, "tok", "id-3", [envelope.encode("id-3", "bq", 3)], time.time(),
                     unique)
    for _ in range(2):                                    # the push, then its retry
        assert script(*held) == [2, b"id-1"]
    assert script(*before) == [0, b""]   # still a repeat
    assert broker.backlog() == 2
