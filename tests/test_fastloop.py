"""The hot loop, run through both the compiled module and its pure-Python twin."""
import importlib

import pytest

from ssjobs import _fastloop_py, envelope, scoreboard
from ssjobs.errors import Reject, Retry

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
    processed, failures, unstarted = loop.run_batch(raws, consumer, slot.buf, slot.offset, Ctl())
    assert processed == 2 and unstarted == []
    codes = [(f[1].payload if f[1] else None, f[2]) for f in failures]
    assert codes == [("retry", loop.RETRY), ("reject", loop.REJECT), (None, loop.MALFORMED),
                     ("boom", loop.FAILED_RUN), ("false", loop.FAILED_RUN)]
    boom = failures[3]
    assert isinstance(boom[3], ValueError) and "ValueError: boom" in boom[4]
    info = slot.read()
    assert info["processed"] == 2 and info["failed"] == 4
    assert sum(info["histogram"]) == 6


def test_stop_between_jobs_returns_the_rest_unstarted(loop):
    ctl = Ctl()
    seen = []

    def consumer(job):
        seen.append(job.payload)
        if job.payload == 1:
            ctl.stopping = True

    raws = [envelope.encode(f"id{i}", "q", i) for i in range(5)]
    slot = make_slot()
    processed, failures, unstarted = loop.run_batch(raws, consumer, slot.buf, slot.offset, ctl)
    assert seen == [0, 1] and processed == 2 and unstarted == raws[2:]


def test_job_id_and_start_time_are_visible_while_running(loop):
    slot = make_slot()
    observed = {}

    def consumer(job):
        info = slot.read()
        observed.update(info)

    raws = [envelope.encode("0123456789abcdef0123456789abcdef", "q", 1)]
    loop.run_batch(raws, consumer, slot.buf, slot.offset, Ctl())
    assert observed["state"] == "busy"
    assert observed["job_id"] == "0123456789abcdef0123456789abcdef"
    assert observed["job_started_at"] > 1e9


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
    if os.environ.get("SSJOBS_REQUIRE_COMPILED"):
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
        processed, failures, _ = mod.run_batch([raw], seen.append, slot.buf, slot.offset, Ctl())
        if failures:
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
