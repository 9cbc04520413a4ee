"""The hot loop, run through both the compiled module and its pure-Python twin."""
import asyncio
import importlib

import msgpack
import pytest

from ssjobs import _fastloop_py, envelope, scoreboard
from ssjobs.errors import Reject, Retry
from ssjobs.outcome import Code

TWINS = [_fastloop_py]
try:
    TWINS.append(importlib.import_module("ssjobs._fastloop"))
except ImportError:  # pragma: no cover - a build without a compiler
    pass


class Ctl:
    stopping = False


@pytest.fixture(params=TWINS, ids=lambda m: m.IMPLEMENTATION)
def loop(request):
    return request.param


def make_slot():
    slot = scoreboard.private_slot()
    slot.claim(1, "q", 0, 0, 1.0)
    return slot


MAX = envelope.DEFAULT_MAX_PAYLOAD_BYTES


def FINISH(awaitable):  # what the worker does with an awaitable a consumer returned
    return asyncio.new_event_loop().run_until_complete(awaitable)


def run_all(loop, raws, consumer, slot, ctl=None):
    """Run a batch as the worker does: after each failure, go on with the rest."""
    failures, i = [], 0
    while i < len(raws):
        end, failure = loop.run_batch(raws[i:], consumer, FINISH, slot.buf, slot.offset,
                                      ctl or Ctl(), MAX)
        assert end > 0 or failure is None
        if failure is None and end < len(raws) - i:
            break  # stopping
        failures.append(failure)
        i += end
    return [f for f in failures if f is not None]


def test_outcomes_are_classified_and_counted(loop):
    def consumer(job):
        kind = job.payload
        if kind == "retry":
            raise Retry(delay=5)
        if kind == "reject":
            raise Reject("no")
        if kind == "boom":
            raise ValueError("boom")
        if kind == "false":
            return False
        return None

    payloads = ["ok", "retry", "reject", "boom", "false", "ok"]
    raws = [envelope.encode(f"id{i}", "q", p) for i, p in enumerate(payloads)]
    raws.insert(3, b"garbage")
    slot = make_slot()
    failures = run_all(loop, raws, consumer, slot)
    codes = [(f.job.payload if f.job else None, f.code) for f in failures]
    assert codes == [("retry", Code.RETRY), ("reject", Code.REJECT), (None, Code.MALFORMED),
                     ("boom", Code.FAILED), ("false", Code.FAILED)]
    boom = failures[3]
    assert isinstance(boom.exc, ValueError) and "ValueError: boom" in boom.traceback
    info = slot.read()
    assert info["processed"] == 2 and info["failed"] == 4
    assert sum(info["histogram"]) == 6


def test_a_failure_ends_the_run_and_is_marked_pending_in_the_slot(loop):
    raws = [envelope.encode(f"id{i}", "q", i) for i in range(5)]
    slot = make_slot()

    def consumer(job):
        if job.payload == 2:
            raise ValueError("two")

    end, failure = loop.run_batch(raws, consumer, FINISH, slot.buf, slot.offset, Ctl(), MAX)
    assert end == 3 and failure.job.payload == 2
    # crash recovery reads this: two jobs done, the third's outcome not yet settled
    assert slot.batch() == scoreboard.BatchPosition(0, 2, 1)
    slot.hold_batch(1)  # the worker settled it
    end, failure = loop.run_batch(raws[3:], consumer, FINISH, slot.buf, slot.offset, Ctl(), MAX)
    assert (end, failure) == (2, None)
    assert slot.batch() == scoreboard.BatchPosition(1, 2, 0)


def test_stop_between_jobs_returns_where_it_stopped(loop):
    ctl = Ctl()
    seen = []

    def consumer(job):
        seen.append(job.payload)
        if job.payload == 1:
            ctl.stopping = True

    raws = [envelope.encode(f"id{i}", "q", i) for i in range(5)]
    slot = make_slot()
    end, failure = loop.run_batch(raws, consumer, FINISH, slot.buf, slot.offset, ctl, MAX)
    assert seen == [0, 1] and (end, failure) == (2, None)
    assert slot.batch().done == 2


def test_job_id_and_start_time_are_visible_while_running_and_cleared_after(loop):
    slot = make_slot()
    observed = {}
    long_id = "u" * 128  # another language's producer may send ids this long

    def consumer(job):
        observed.update(slot.read())
        observed["running"] = slot.batch().running

    raws = [envelope.encode(long_id, "q", 1)]
    loop.run_batch(raws, consumer, FINISH, slot.buf, slot.offset, Ctl(), MAX)
    assert observed["state"] == "busy" and observed["running"]
    assert observed["job_id"] == long_id
    assert observed["job_started_at"] > 1e9
    assert slot.job_started_at == 0.0 and not slot.batch().running


def test_an_envelope_over_max_bytes_is_refused_without_decoding(loop):
    slot = make_slot()
    seen = []
    big = envelope.encode("big", "q", "x" * 5000)
    end, failure = loop.run_batch([big], seen.append, FINISH, slot.buf, slot.offset, Ctl(), 4096)
    assert seen == [] and end == 1
    assert failure.code == Code.TOO_LARGE and failure.job is None and failure.raw == big


def test_an_attempts_counter_at_its_limit_is_malformed_not_an_overflow(loop):
    slot = make_slot()
    for attempts in (envelope.MAX_ATTEMPTS, 2**64 - 1):
        raw = msgpack.packb([1, "id", "q", attempts, 1.0, {}, None])
        end, failure = loop.run_batch([raw], lambda job: None, FINISH, slot.buf, slot.offset, Ctl(),
                                      MAX)
        assert failure.code == Code.MALFORMED, attempts


def test_an_async_consumer_and_an_awaitable_result_are_awaited(loop):
    slot = make_slot()
    ran = []

    async def consumer(job):
        await asyncio.sleep(0)
        ran.append(job.payload)
        if job.payload == "no":
            return False

    def plain(job):   # a plain function that returns an awaitable
        return consumer(job)

    raws = [envelope.encode("a", "q", "yes"), envelope.encode("b", "q", "no")]
    end, failure = loop.run_batch(raws, consumer, FINISH, slot.buf, slot.offset, Ctl(), MAX)
    assert (end, failure.code, failure.job.payload) == (2, Code.FAILED, "no")
    end, failure = loop.run_batch(raws[:1], plain, FINISH, slot.buf, slot.offset, Ctl(), MAX)
    assert (end, failure) == (1, None)
    assert ran == ["yes", "no", "yes"] and slot.read()["processed"] == 2


def test_a_process_forked_inside_the_consumer_records_and_runs_nothing(loop):
    import os

    slot = make_slot()
    raws = [envelope.encode(f"id{i}", "q", i) for i in range(3)]
    ran = []

    def consumer(job):
        ran.append(job.payload)
        if job.payload == 0 and os.fork() == 0:  # the child returns into the loop
            loop.mark_forked()                  # (what the worker's at-fork hook does)

    before = slot.read()["processed"]
    end, failure = loop.run_batch(raws, consumer, FINISH, slot.buf, slot.offset, Ctl(), MAX)
    if ran == [0]:  # the child: it stopped at once
        os._exit(0 if (end, failure) == (0, None) else 1)
    _, status = os.wait()
    assert os.waitstatus_to_exitcode(status) == 0
    # the slot is shared with the child: had it recorded its copy of job 0, this were 4
    assert ran == [0, 1, 2] and slot.read()["processed"] == before + 3


def test_histogram_buckets_agree_with_the_scoreboard_layout(loop):
    bounds = scoreboard.HIST_BOUNDS_S
    samples = [0.0, 0.00005, 0.5, 3.0, 100.0, 1e9]
    for bound in bounds[:-1]:  # each side of every boundary
        samples += [bound * 0.999, bound, bound * 1.001]
    for seconds in samples:
        expected = next(i for i, b in enumerate(bounds) if seconds < b)
        assert loop.bucket(seconds) == scoreboard.bucket_of(seconds) == expected, seconds


def test_compiled_twin_is_present_in_this_build():
    import os
    if not os.environ.get("SSJOBS_REQUIRE_COMPILED"):
        pytest.skip("SSJOBS_REQUIRE_COMPILED=1 makes a missing compiled loop fail (CI sets it)")
    assert len(TWINS) == 2


def test_both_twins_decode_every_shape_the_same_way():
    """The compiled loop has a fast path for the canonical layout; anything else must
    decode (or be rejected) exactly as the strict pure decoder does."""
    import random

    import msgpack

    rng = random.Random(3)
    payloads = [None, 0, -1, 2**40, 1.5, "x", "é" * 40, b"\x00\xff", [1, [2]], {"a": {"b": 1}},
                {1: 2}, True]
    cases = []
    for payload in payloads:
        cases.append(envelope.encode("0" * 32, "t", payload))
        cases.append(envelope.encode("short", "tópic", payload, attempts=200,
                                     headers={"h": 1}))
        cases.append(msgpack.packb([1, "i", "t", 0, 5, {}, payload]))          # int time
        cases.append(msgpack.packb([1, "i", "t", 0, 1.0, [], payload]))        # Lua's {}
    base = envelope.encode("0" * 32, "t", {"k": "v"})
    for _ in range(300):  # corrupt a byte, truncate, or append
        b = bytearray(base)
        roll = rng.random()
        if roll < 0.5:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif roll < 0.8:
            del b[rng.randrange(len(b)):]
        else:
            b += bytes([rng.randrange(256)])
        cases.append(bytes(b))
    cases += [b"\x97\x01\xd9\x20" + b"\xff" * 32 + b"\xa1t\x00\xcb" + b"\0" * 8 + b"\x80\xc0"]

    def outcome(mod, raw):
        seen = []
        slot = make_slot()
        _, failure = mod.run_batch([raw], seen.append, FINISH, slot.buf, slot.offset, Ctl(), MAX)
        if failure:
            return "('malformed',)"
        j = seen[0]
        return repr((j.id, j.topic, j.payload, j.attempts, j.enqueued_at, j.headers,
                     type(j.enqueued_at), type(j.payload)))

    malformed = 0
    for raw in cases:
        results = {outcome(m, raw) for m in TWINS}
        assert len(results) == 1, (raw, results)
        malformed += results == {"('malformed',)"}
    assert 100 < malformed < len(cases)  # the corpus exercises both sides


def test_assemble_gives_the_envelopes_encode_would_and_ids_that_wrap_in_order(loop):
    prefix, _ = envelope.id_block(1764160000.0, 0)
    headers = {"priority": 3}
    middle = envelope.new_envelope_middle("q.t", 1764160000.0, headers)
    payloads = [None, 1, "é", {"k": [1, b"\x00"]}, "x" * 300]
    bodies = envelope.pack_payloads(payloads, MAX)
    first = envelope.ID_SEQ_MASK - 1                    # the sequence wraps inside the batch
    ids, envs = loop.assemble(prefix, first, middle, bodies)
    assert ids == [f"{prefix}{(first + i) & envelope.ID_SEQ_MASK:010x}" for i in range(5)]
    assert envs == [envelope.encode(job_id, "q.t", payload, 0, 1764160000.0, headers)
                    for job_id, payload in zip(ids, payloads, strict=True)]
    assert loop.assemble(prefix, 0, middle, []) == ([], [])
