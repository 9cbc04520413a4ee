import asyncio
import subprocess
import sys
import threading

import pytest

from ssjobs import envelope
from ssjobs.broker import TopicKeys
from ssjobs.producer import PUSH_SHA, Producer, push_call, push_options, resp_packer


def ready(rclient, topic):
    return [envelope.decode(r) for r in rclient.lrange(TopicKeys("t", topic).ready, 0, -1)]


def test_push_stores_a_decodable_envelope_with_hash_tagged_key(redis_url, rclient):
    with Producer(redis_url, prefix="t") as p:
        job_id = p.push("mail.send", {"to": "x"})
        assert p.queue_size("mail.send") == 1
    assert rclient.exists("t:{mail.send}:ready")
    (job,) = ready(rclient, "mail.send")
    assert (job.id, job.topic, job.payload, job.attempts) == (job_id, "mail.send", {"to": "x"}, 0)


def test_the_producers_own_packer_writes_what_redis_py_writes(redis_url):
    """Pushes are packed by hiredis straight, not by redis-py: the bytes must be the same
    (non-ASCII keys and payload bytes included)."""
    keys = TopicKeys("t", "émoji.q")
    calls = [push_call(keys, "tok", "0" * 32, [b"\x97\x00\xff", b""], 1764160000.25,
                       push_options(delay=1.5, priority=3, unique_key="clé")),
             push_call(keys, "tok", "1" * 32, [b"e"], 1.0, push_options())]
    with Producer(redis_url, prefix="t") as p:
        conn = p._topic("q")[1]._connection()
        for call_keys, call_args in calls:
            command = ("EVALSHA", PUSH_SHA, len(call_keys), *call_keys, *call_args)
            assert b"".join(resp_packer()(*command)) == b"".join(conn.pack_command(*command))


def test_pushes_work_without_hiredis(redis_url, rclient):
    """hiredis is optional: without it the producer packs with redis-py's pure packer."""
    script = ("import sys; sys.modules['hiredis'] = None\n"
              "from ssjobs.producer import Producer\n"
              f"with Producer({redis_url!r}, prefix='t') as p:\n"
              "    p.push('nohi', {'n': 1}); p.push_many('nohi', [2, 3])\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert [job.payload for job in ready(rclient, "nohi")] == [3, 2, {"n": 1}]


def test_delay_goes_to_the_delayed_set(redis_url, rclient):
    with Producer(redis_url, prefix="t") as p:
        p.push("t1", 1, delay=60)
    (member, score), = rclient.zrange("t:{t1}:delayed", 0, -1, withscores=True)
    assert envelope.decode(member).payload == 1
    assert score == pytest.approx(envelope.decode(member).enqueued_at + 60, abs=1)


def test_push_many_is_fifo_and_returns_ids_in_order(redis_url, rclient):
    with Producer(redis_url, prefix="t") as p:
        ids = p.push_many("t1", list(range(2500)))
    assert len(ids) == len(set(ids)) == 2500
    # workers take from the right: the rightmost element is the first pushed
    assert [j.payload for j in reversed(ready(rclient, "t1"))] == list(range(2500))
    assert [j.id for j in reversed(ready(rclient, "t1"))] == ids


def test_push_many_is_all_or_nothing_on_validation(redis_url, rclient):
    with Producer(redis_url, prefix="t", max_payload_bytes=100) as p:
        with pytest.raises(TypeError, match="set"):
            p.push_many("t1", [1, 2, {3}])
        with pytest.raises(ValueError, match="max_payload_bytes"):
            p.push_many("t1", [1, "x" * 200])
        with pytest.raises(ValueError):
            p.push("t1", "x" * 200)
        assert p.queue_size("t1") == 0
    assert rclient.dbsize() == 0


def test_pushes_after_redis_forgot_the_push_script_enqueue_every_job_once(redis_url, rclient):
    """A restarted Redis has no scripts loaded: each streamed call is answered NOSCRIPT; once
    the replies of the others are read, the script is loaded and those calls sent again."""
    from ssjobs.aio import AsyncProducer

    async def push_async():
        async with AsyncProducer(redis_url, prefix="t") as ap:
            await ap.push("t1", "warm")
            rclient.script_flush()
            ids = await ap.push_many("t1", list(range(2500)))
            rclient.script_flush()
            return ids + [await ap.push("t1", "last")]

    with Producer(redis_url, prefix="t") as p:
        p.push("t1", "warm")
        rclient.script_flush()
        ids = p.push_many("t1", list(range(2500)))
        rclient.script_flush()
        ids.append(p.push("t1", "one"))
    ids += asyncio.run(push_async())
    stored = [j.id for j in ready(rclient, "t1")]
    assert len(stored) == len(set(stored)) == 2 + len(ids)
    assert set(ids) <= set(stored)


def test_concurrent_async_pushes_each_enqueue_once(redis_url, rclient):
    from ssjobs.aio import MAX_CONNECTIONS, AsyncProducer

    seen = []

    async def count_clients(pushes):
        while not pushes.done():
            seen.append(len(rclient.client_list()))
            await asyncio.sleep(0.002)

    async def main():
        async with AsyncProducer(redis_url, prefix="t") as ap:
            pushes = asyncio.gather(*(ap.push("t1", i) for i in range(500)))
            await count_clients(pushes)
            return await pushes

    before = len(rclient.client_list())
    ids = asyncio.run(main())
    jobs = ready(rclient, "t1")
    assert sorted(j.id for j in jobs) == sorted(ids) and len(set(ids)) == 500
    assert sorted(j.payload for j in jobs) == list(range(500))
    assert len(seen) > 1 and max(seen) - before <= MAX_CONNECTIONS   # the burst shares them


def test_thread_safe_pushes(redis_url):
    with Producer(redis_url, prefix="t") as p:
        ids: list[str] = []
        lock = threading.Lock()

        def pusher():
            mine = [p.push("t1", i) for i in range(200)]
            with lock:
                ids.extend(mine)

        threads = [threading.Thread(target=pusher) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert p.queue_size("t1") == 1600
        assert len(set(ids)) == 1600


def test_from_config_routes_a_topic_to_its_own_redis(project, rclient, tmp_path):
    from redis_server import RedisServer

    other = RedisServer(tmp_path)
    other.start()
    try:
        project.write_config([
            {"topic": "here", "consumer": "m:f"},
            {"topic": "there", "consumer": "m:f"},
        ])
        text = project.config.read_text() + f'[jobs.redis]\nurl = "{other.url}"\n'
        project.config.write_text(text)
        with Producer.from_config(project.config) as p:
            p.push("here", 1)
            p.push_many("there", [2, 3])
            p.push("there", 4)
            assert (p.queue_size("here"), p.queue_size("there")) == (1, 3)
        assert rclient.llen("t:{here}:ready") == 1 and not rclient.exists("t:{there}:ready")
        assert other.client().llen("t:{there}:ready") == 3  # prefix inherited from [redis]
    finally:
        other.stop()


def test_async_producer_is_the_same_wire_format(redis_url, rclient):
    import asyncio

    from ssjobs.aio import AsyncProducer

    async def main():
        async with AsyncProducer(redis_url, prefix="t", max_payload_bytes=100) as p:
            one = await p.push("q", {"a": 1})
            many = await p.push_many("q", [1, 2, 3])
            await p.push("q", 4, delay=60)
            with pytest.raises(TypeError):
                await p.push_many("q", [1, {2}])
            with pytest.raises(ValueError):
                await p.push("q", "x" * 200)
            return [one, *many], await p.queue_size("q")

    ids, size = asyncio.run(main())
    assert size == 4
    assert [j.id for j in reversed(ready(rclient, "q"))] == ids
    assert rclient.zcard("t:{q}:delayed") == 1
