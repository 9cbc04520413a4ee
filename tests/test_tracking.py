"""Tracked jobs (``track = true``): every state a job passes through, its result, error and
progress, cancel in each state, records expiring, and that an untracked topic writes no
per-job key. Real masters and workers against a private Redis."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import wait_for
from masters import MasterProc

from ssjobs import envelope
from ssjobs.aio import AsyncProducer
from ssjobs.broker import Broker, Outcomes, Rules, TopicKeys, connect
from ssjobs.errors import Fenced
from ssjobs.producer import Producer
from ssjobs.tracking import Records, Tracker

CONSUMERS = """
import json, os, time

HERE = os.path.dirname(__file__)

def note(job):
    with open(os.path.join(HERE, "ran.jsonl"), "a") as f:
        f.write(json.dumps({"id": job.id, "attempts": job.attempts}) + "\\n")

def run(job):
    note(job)
    p = job.payload if isinstance(job.payload, dict) else {}
    kind = p.get("kind")
    if kind == "hold":   # until cancelled (or 30 s)
        job.progress(0.4, "rows 4000/10000")
        deadline = time.time() + 30
        while not job.cancelled and time.time() < deadline:
            time.sleep(0.02)
        if p.get("raise"):
            raise RuntimeError("stopped on request")
        return "stopped"
    if kind == "fail":
        raise ValueError("boom")
    if kind == "flaky" and job.attempts == 0:
        raise ValueError("first try fails")
    if kind == "crash" and not os.path.exists(os.path.join(HERE, "crashed")):
        open(os.path.join(HERE, "crashed"), "w").close()
        os._exit(9)
    if kind == "sleep":
        time.sleep(p["s"])
    if kind == "unpackable":
        return object()
    if kind == "huge":
        return "x" * 100_000
    if kind == "badprogress":
        refused = []
        for bad in (2.0, -0.1, float("nan"), "half", True):
            try:
                job.progress(bad)
            except ValueError as exc:
                refused.append(str(exc))
        job.progress(1, "done")
        return refused
    return {"echo": job.payload, "raw": b"\\x00\\x01"}
"""
TRACKED = {"topic": "rep", "consumer": "trk:run", "track": True, "result_ttl": 60,
           "max_retries": 1, "retry_backoff": 0.2}
PLAIN = {"topic": "plain", "consumer": "trk:run", "static_workers": 2}


@pytest.fixture
def site(project):
    project.consumer("trk", CONSUMERS)
    project.write_config([TRACKED, PLAIN])
    return project


@pytest.fixture
def master(site):
    proc = MasterProc(site.config, site.data_dir)
    proc.start()
    yield proc
    proc.kill_all()


@pytest.fixture
def producer(site):
    with Producer.from_config(site.config) as p:
        yield p


def ran(site) -> list[dict]:
    path = site.consumers / "ran.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def state_of(producer, job_id, topic="rep"):
    record = producer.status(topic, job_id)
    return record and record["state"]


def wait_state(producer, job_id, want, timeout=15):
    return wait_for(lambda: (r := producer.status("rep", job_id)) and r["state"] == want and r,
                    timeout, what=f"job {job_id} {want} (now {state_of(producer, job_id)})")


def wait_begun(producer, job_id):
    """A "hold" job running in its consumer: held by a worker is not enough (that is
    "running" already), its first progress report says the consumer began."""
    return wait_for(lambda: (r := producer.status("rep", job_id)) and r["state"] == "running"
                    and r["progress"] and r, 15, what=f"job {job_id} begun")


def ssjobs(site, *args):
    return subprocess.run([sys.executable, "-m", "ssjobs", *args, "-c", str(site.config)],
                          capture_output=True, text=True, timeout=30, cwd=site.root)


# -- states ------------------------------------------------------------------------------

def test_a_job_is_queued_then_running_with_progress_then_succeeded_with_its_result(
        site, master, producer):
    holder = producer.push("rep", {"kind": "hold"})      # the one worker is busy with it
    running = wait_state(producer, holder, "running")
    queued = producer.push("rep", {"n": 1})
    record = producer.status("rep", queued)
    assert record["state"] == "queued" and record["attempts"] == 0
    assert record["started_at"] is None and abs(record["enqueued_at"] - time.time()) < 5
    progress = wait_for(lambda: producer.status("rep", holder)["progress"], 5, what="progress")
    assert progress["fraction"] == 0.4 and progress["message"] == "rows 4000/10000"
    assert running["started_at"] >= running["enqueued_at"]
    assert producer.cancel("rep", holder) == "running"
    done = wait_state(producer, queued, "succeeded")
    assert done["result"] == {"echo": {"n": 1}, "raw": b"\x00\x01"}
    assert done["error"] is None and done["attempts"] == 0
    assert done["enqueued_at"] <= done["started_at"] <= done["finished_at"] <= time.time()


def test_a_delayed_job_is_delayed_until_due(site, master, producer):
    job_id = producer.push("rep", {"n": 2}, delay=1.5)
    assert state_of(producer, job_id) == "delayed"
    time.sleep(0.5)
    assert state_of(producer, job_id) == "delayed"
    assert wait_state(producer, job_id, "succeeded")["result"]["echo"] == {"n": 2}


def test_a_failing_job_is_retrying_then_dead_with_its_error_then_queued_again_from_dead(
        site, master, producer):
    job_id = producer.push("rep", {"kind": "fail"})
    wait_for(lambda: state_of(producer, job_id) in ("retrying", "dead"), 10, what="a failure")
    dead = wait_state(producer, job_id, "dead")
    assert dead["attempts"] == 2 and dead["error"]["type"] == "ValueError"
    assert dead["error"]["message"] == "boom" and dead["finished_at"] is not None
    assert [r["attempts"] for r in ran(site) if r["id"] == job_id] == [0, 1]
    flaky = producer.push("rep", {"kind": "flaky"})
    record = wait_state(producer, flaky, "succeeded")
    assert record["attempts"] == 1 and record["error"] is None   # the failure is history
    retried = ssjobs(site, "dead", "retry", "rep", "--id", job_id)
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: len([r for r in ran(site) if r["id"] == job_id]) == 4, 15,
             what="two more runs after the retry from dead")
    assert wait_state(producer, job_id, "dead")["attempts"] == 2


def test_a_job_past_its_own_timeout_fails_and_is_retried(site, master, producer):
    job_id = producer.push("rep", {"kind": "sleep", "s": 3}, timeout=0.3, max_retries=0)
    dead = wait_state(producer, job_id, "dead", timeout=20)
    assert dead["error"]["type"] == "JobTimeout" and "0.3" in dead["error"]["message"]


def test_a_worker_killed_mid_job_leaves_a_record_that_the_recovery_makes_true(
        site, master, producer):
    job_id = producer.push("rep", {"kind": "crash"})
    record = wait_state(producer, job_id, "succeeded", timeout=30)
    assert [r["id"] for r in ran(site)].count(job_id) == 2
    assert record["result"]["echo"] == {"kind": "crash"}


def test_sigkill_of_a_worker_holding_a_job_counts_an_attempt_and_runs_it_again(
        site, master, producer, rclient):
    job_id = producer.push("rep", {"kind": "hold"})
    wait_begun(producer, job_id)
    master.signal(signal.SIGSTOP)          # no replacement worker takes it back at once
    try:
        (worker,) = [w for w in master.workers() if w["topic"] == "rep"]
        os.kill(worker["pid"], signal.SIGKILL)
        wait_for(lambda: master.zombies(), 10, what="the dead worker")
    finally:
        master.signal(signal.SIGCONT)
    # recovered (the job it ran when killed is charged an attempt) and run again
    wait_for(lambda: [r["id"] for r in ran(site)].count(job_id) == 2, 20, what="a second run")
    assert wait_state(producer, job_id, "running")["attempts"] == 1
    assert producer.cancel("rep", job_id) == "running"
    wait_state(producer, job_id, "cancelled")


# -- results --------------------------------------------------------------------------------

def test_results_that_cannot_be_kept_say_why(site, master, producer):
    unpackable = producer.push("rep", {"kind": "unpackable"})
    huge = producer.push("rep", {"kind": "huge"})
    first = wait_state(producer, unpackable, "succeeded")
    second = wait_state(producer, huge, "succeeded")
    assert first["result"] is None and "msgpack" in first["result_error"]
    assert second["result"] is None and "over the 65536" in second["result_error"]


def test_results_of_each_kind_round_trip_and_bad_progress_is_a_value_error(
        site, master, producer):
    payloads = [{"n": 1}, [1, "two", 3.5, None], "text", 42, True]
    ids = [producer.push("rep", p) for p in payloads]
    for job_id, payload in zip(ids, payloads, strict=True):
        assert wait_state(producer, job_id, "succeeded")["result"] == {
            "echo": payload, "raw": b"\x00\x01"}
    bad = producer.push("rep", {"kind": "badprogress"})
    record = wait_state(producer, bad, "succeeded")
    assert len(record["result"]) == 5 and all(
        "progress fraction must be a number from 0 to 1" in m for m in record["result"])
    assert record["progress"]["fraction"] == 1 and record["progress"]["message"] == "done"


# -- cancel ----------------------------------------------------------------------------------

def test_cancel_in_each_state(site, master, producer):
    holder = producer.push("rep", {"kind": "hold", "raise": True})
    wait_state(producer, holder, "running")
    queued = producer.push("rep", {"n": "queued"})
    delayed = producer.push("rep", {"n": "delayed"}, delay=0.5)
    assert producer.cancel("rep", queued) == "queued"
    assert producer.cancel("rep", delayed) == "delayed"
    assert producer.cancel("rep", "no-such-job") is None
    assert state_of(producer, queued) == "cancelled"
    # the running job stops when it sees job.cancelled; it raised, so it is not retried
    assert producer.cancel("rep", holder) == "running"
    stopped = wait_state(producer, holder, "cancelled")
    assert stopped["finished_at"] is not None
    after = producer.push("rep", {"n": "after"})
    wait_state(producer, after, "succeeded")
    time.sleep(1.0)   # the delayed one is due by now and would have run before `after`
    ids = [r["id"] for r in ran(site)]
    assert queued not in ids and delayed not in ids and ids.count(holder) == 1
    assert producer.cancel("rep", after) == "succeeded"       # finished: left as it is
    assert state_of(producer, after) == "succeeded"
    assert state_of(producer, queued) == state_of(producer, delayed) == "cancelled"


def test_cancel_of_a_unique_job_gives_its_key_back(site, master, producer):
    holder = producer.push("rep", {"kind": "hold"})
    wait_state(producer, holder, "running")
    first, pushed = producer.push_unique("rep", {"n": 1}, "report-42")
    again, pushed_again = producer.push_unique("rep", {"n": 2}, "report-42")
    assert pushed and not pushed_again and again == first
    assert producer.cancel("rep", first) == "queued"
    second, pushed = producer.push_unique("rep", {"n": 3}, "report-42")
    assert pushed and second != first
    producer.cancel("rep", holder)
    assert wait_state(producer, second, "succeeded")["result"]["echo"] == {"n": 3}


def test_an_idle_tracked_topic_picks_up_at_once_and_never_runs_a_cancelled_delayed_job(
        site, master, producer, rclient):
    # its idle worker blocks for jobs instead of polling: pickup within milliseconds
    took = []
    for i in range(5):
        pushed = time.monotonic()
        wait_state(producer, producer.push("rep", {"n": i}), "succeeded")
        took.append(time.monotonic() - pushed)
    assert sorted(took)[2] < 0.15, took
    # a cancelled delayed job, promoted to ready while that worker waits, is dropped
    late = producer.push("rep", {"n": "late"}, delay=0.8)
    assert producer.cancel("rep", late) == "delayed"
    keys = TopicKeys("t", "rep")
    wait_for(lambda: not rclient.zcard(keys.delayed) and not rclient.llen(keys.ready), 10,
             what="the promote")
    wait_for(lambda: not rclient.exists(keys.cancels), 5, what="the cancel seen through")
    after = producer.push("rep", {"n": "after"})
    wait_state(producer, after, "succeeded")
    assert late not in {r["id"] for r in ran(site)}
    assert state_of(producer, late) == "cancelled"


# -- expiry and cost -----------------------------------------------------------------------

def test_a_finished_jobs_record_expires_after_result_ttl(site, producer, rclient):
    site.write_config([{**TRACKED, "result_ttl": 1}, PLAIN])
    master = MasterProc(site.config, site.data_dir)
    master.start()
    try:
        job_id = producer.push("rep", {"n": 1})
        wait_state(producer, job_id, "succeeded")
        wait_for(lambda: producer.status("rep", job_id) is None, 5, what="the record expiring")
        # and it is gone from Redis, not only hidden: the idle workers' settles delete it
        jobs = TopicKeys("t", "rep").jobs
        wait_for(lambda: not rclient.hexists(jobs, job_id), 5, what="the record deleted")
    finally:
        master.kill_all()


@pytest.fixture
def tracked_broker(redis_url):
    """A tracked topic driven straight through its scripts, as a worker would (no master)."""
    client = connect(redis_url)
    broker = Broker(client, "t", "rep", Rules(track=True, result_ttl=1))
    broker.publish_conf(True, 1)
    broker.register_worker("w1")
    yield broker
    client.close()


def finish(broker, seq, state, job_ids, ttl=1):
    """Settle the jobs the worker holds as ``state``; the records a worker would send."""
    records = Records(time.time(), time.time(), ttl)
    for job_id in job_ids:
        if state == "succeeded":
            records.ended(state, job_id, 0, time.time(), {"ok": job_id}, None)
        else:
            records.add(state, {"attempts": 0, "enqueued_at": time.time(),
                                "error": {"type": "E", "message": "m"}}, job_id, None)
    return broker.settle("w1", seq, done=len(job_ids), outcomes=Outcomes(
        processed=len(job_ids), records=records.records, expiry=records.expiry))


def test_expiry_deletes_only_records_that_did_not_start_again(tracked_broker, redis_url):
    odd = "an id, with spaces"   # a foreign producer's: ids may be any string
    with Producer(redis_url, prefix="t") as p:
        first, second = p.push_many("rep", [1, 2])
        tracked_broker.client.lpush(tracked_broker.keys.ready, envelope.encode(odd, "rep", 3))
        taken = tracked_broker.settle("w1", 0, take=3).jobs
        assert [envelope.decode(j).id for j in taken] == [first, second, odd]
        assert p.status("rep", first)["state"] == "running"
        finish(tracked_broker, 1, "dead", [first, second, odd])
        assert p.status("rep", odd)["state"] == "dead"
        assert p.status("rep", second)["state"] == "dead"
        # first is retried from dead before its record expires: queued again, for good
        entry = envelope.encode(first, "rep", 1)
        tracked_broker.client.lpush(tracked_broker.keys.dead, entry)
        assert tracked_broker.dead_requeue(entry, entry)
        assert p.status("rep", first)["state"] == "queued"
        time.sleep(2.1)
        tracked_broker.settle("w1", 2)   # any settle trims the expired entries
        jobs = tracked_broker.client.hgetall(tracked_broker.keys.jobs)
        assert first.encode() in jobs and second.encode() not in jobs
        assert odd.encode() not in jobs
        assert p.status("rep", first)["state"] == "queued"
        assert p.status("rep", second) is None


def test_a_job_asked_to_stop_that_fails_into_a_retry_ends_cancelled(tracked_broker,
                                                                     redis_url):
    """The cancel came after the worker's own last look: it reports a retry, the settle
    makes the record cancelled (finished, with its expiry) and keeps the cancel pending
    for the take step, which drops the retry."""
    with Producer(redis_url, prefix="t") as p:
        job_id = p.push("rep", 1)
        tracked_broker.settle("w1", 0, take=1)
        assert p.cancel("rep", job_id) == "running"
        finish(tracked_broker, 1, "retrying", [job_id])
        record = p.status("rep", job_id)
        assert record["state"] == "cancelled" and record["finished_at"] is not None
        assert record["error"] == {"type": "E", "message": "m"}
        assert tracked_broker.client.llen(f"{tracked_broker.keys.base}:expiry") == 1
        assert tracked_broker.client.get(tracked_broker.keys.cancels) == b"1"
        tracked_broker.client.lpush(tracked_broker.keys.ready, envelope.encode(job_id, "rep", 1))
        assert tracked_broker.settle("w1", 2, take=1).jobs == []   # the retry is dropped
        assert not tracked_broker.client.exists(tracked_broker.keys.cancels)
        assert p.status("rep", job_id)["state"] == "cancelled"


def test_a_job_the_idle_wait_hands_over_runs_with_its_own_start_time(tracked_broker,
                                                                     redis_url):
    """Between the idle wait's BLMOVE and the worker's note of the handover, the job sits
    in the in-flight list of a worker that has no take time: it reads as queued, never as
    running with no start time, or with the take time of the worker's previous batch."""
    with Producer(redis_url, prefix="t") as p:
        earlier = p.push("rep", 1)
        tracked_broker.settle("w1", 0, take=1)
        assert p.status("rep", earlier)["state"] == "running"
        finish(tracked_broker, 1, "succeeded", [earlier])   # asks for no more: holds nothing
        assert tracked_broker.settle("w1", 2, take=1).jobs == []
        time.sleep(0.05)
        job_id = p.push("rep", 2)
        assert envelope.decode(tracked_broker.wait_one("w1", 1)).id == job_id
        assert p.status("rep", job_id)["state"] == "queued"
        assert Tracker(tracked_broker.client, tracked_broker.keys).handed_over("w1",
                                                                               job_id) is False
        record = p.status("rep", job_id)
        assert record["state"] == "running"
        assert record["started_at"] >= record["enqueued_at"]


def test_a_periodic_jobs_record_is_queued_when_its_tick_is_enqueued(tracked_broker,
                                                                    redis_url):
    job_id = envelope.new_id()
    entry = envelope.encode(job_id, "rep", {"tick": 1})
    before = time.time()
    assert tracked_broker.enqueue_tick("every-1s", 1000.0, entry)
    assert not tracked_broker.enqueue_tick("every-1s", 1000.0, entry)   # once per tick
    with Producer(redis_url, prefix="t") as p:
        record = p.status("rep", job_id)
    assert record["state"] == "queued" and record["attempts"] == 0
    assert before <= record["enqueued_at"] <= time.time()
    assert record["started_at"] is None and record["finished_at"] is None


def test_a_fenced_worker_writes_no_record(tracked_broker, redis_url):
    with Producer(redis_url, prefix="t") as p:
        job_id = p.push("rep", 1)
        tracked_broker.settle("w1", 0, take=1)
        tracked_broker.recover("w1")          # presumed dead: its job goes back, uncharged
        with pytest.raises(Fenced):
            finish(tracked_broker, 1, "succeeded", [job_id], ttl=60)
        assert p.status("rep", job_id)["state"] == "queued"
        assert not tracked_broker.client.exists(f"{tracked_broker.keys.base}:expiry")


def test_an_untracked_topic_writes_no_per_job_key(site, master, producer, rclient):
    def topic_keys():
        return sorted(k.decode() for k in rclient.scan_iter(match="t:{plain}:*", count=1000))

    keys = TopicKeys("t", "plain")
    producer.push("plain", {"n": "first"})
    wait_for(lambda: rclient.hget(keys.stats, "processed") == b"1", 30, what="1 job")
    after_one = topic_keys()
    producer.push_many("plain", [{"n": i} for i in range(1000)])
    producer.push("plain", {"n": "unique"}, unique_key="u1")
    wait_for(lambda: rclient.hget(keys.stats, "processed") == b"1002", 30, what="1002 jobs")
    # the same keys after 1,002 jobs as after one (push markers aside): none per job, and
    # none of the tracking ones
    assert [k for k in topic_keys() if ":push:" not in k] == \
        [k for k in after_one if ":push:" not in k]
    assert not [k for k in topic_keys() if k.rsplit(":", 1)[1] in (
        "jobs", "expiry", "progress", "cancelling", "taken") or ":unique:" in k]
    assert producer.status("plain", ran(site)[0]["id"]) is None


def test_records_of_the_first_layout_are_converted_when_a_master_starts(site, producer,
                                                                        rclient):
    """One hash per job (P:{T}:job:ID) was the first layout: a master converts them."""
    import msgpack

    now, keys = time.time(), TopicKeys("t", "rep")
    old = {"Q": {"state": "queued", "attempts": 0, "enqueued_at": now},
           "S": {"state": "succeeded", "attempts": 1, "enqueued_at": now, "finished_at": now,
                 "result": msgpack.packb({"raw": b"\x00\xff"}, use_bin_type=True),
                 "error": json.dumps({"type": "E", "message": "first try"})},
           "C": {"state": "cancelled", "attempts": 0, "enqueued_at": now,
                 "finished_at": now},     # cancelled while queued: not yet dropped
           "R": {"state": "running", "attempts": 0, "enqueued_at": now, "cancel": "1",
                 "progress": json.dumps({"fraction": 0.5, "message": "half", "at": now})}}
    for job_id, fields in old.items():
        rclient.hset(f"t:{{rep}}:job:{job_id}", mapping=fields)
    rclient.expire("t:{rep}:job:S", 60)
    rclient.set(keys.cancels, 2)
    rclient.lpush(keys.ready, envelope.encode("C", "rep", {"n": "cancelled"}))
    master = MasterProc(site.config, site.data_dir)
    master.start()
    try:
        wait_for(lambda: rclient.llen(keys.ready) == 0, 10, what="the take step")
        assert not list(rclient.scan_iter(match="t:{rep}:job:*"))
        assert rclient.hget(keys.conf, "records_layout") == b"2"
        states = {job_id: state_of(producer, job_id) for job_id in old}
        assert states == {"Q": "queued", "S": "succeeded", "C": "cancelled", "R": "queued"}
        succeeded = producer.status("rep", "S")
        assert succeeded["result"] == {"raw": b"\x00\xff"} and succeeded["attempts"] == 1
        assert succeeded["error"] == {"type": "E", "message": "first try"}
        running = producer.status("rep", "R")
        assert running["cancel_requested"] and running["progress"]["message"] == "half"
        assert "C" not in {r["id"] for r in ran(site)}   # dropped by the take step
        assert rclient.get(keys.cancels) == b"1"          # R's is still to be seen
    finally:
        master.kill_all()


# -- the other ways in ---------------------------------------------------------------------

def test_ssjobs_job_show_and_cancel(site, master, producer):
    holder = producer.push("rep", {"kind": "hold"})
    wait_begun(producer, holder)
    shown = ssjobs(site, "job", "show", "rep", holder, "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["state"] == "running" and record["id"] == holder
    text = ssjobs(site, "job", "show", "rep", holder).stdout
    assert "state:       running" in text and "40% rows 4000/10000" in text
    cancel = ssjobs(site, "job", "cancel", "rep", holder)
    assert cancel.returncode == 0 and "asked to stop" in cancel.stdout
    wait_state(producer, holder, "cancelled")
    for args in (("show", "rep", "nope"), ("cancel", "rep", "nope"),
                 ("show", "plain", "nope")):
        missing = ssjobs(site, "job", *args)
        assert missing.returncode == 1 and "Traceback" not in missing.stderr
        assert missing.stderr.count("\n") == 1 and "no job 'nope'" in missing.stderr
    assert "does not track its jobs" in ssjobs(site, "job", "show", "plain", "nope").stderr
    unknown = ssjobs(site, "job", "show", "nosuch.topic", "x")
    assert unknown.returncode == 1 and "unknown topic" in unknown.stderr


def test_the_async_producer_reads_and_cancels_records(site, master, producer):
    async def go():
        async with AsyncProducer(site.redis_url, prefix="t") as p:
            holder = await p.push("rep", {"kind": "hold"})
            for _ in range(500):
                if (record := await p.status("rep", holder)) and record["state"] == "running":
                    break
                await asyncio.sleep(0.02)
            queued = await p.push("rep", {"n": 1})
            return (holder, (await p.status("rep", queued))["state"],
                    await p.cancel("rep", queued), await p.cancel("rep", holder),
                    await p.status("rep", "nope"), await p.cancel("rep", "nope"))

    holder, state, cancelled, asked, missing, missing_cancel = asyncio.run(go())
    assert (state, cancelled, asked, missing, missing_cancel) == (
        "queued", "queued", "running", None, None)
    wait_state(producer, holder, "cancelled")
