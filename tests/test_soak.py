"""Chaos soak: everything at once for a while, then count. Marked slow (~1 min).

Workers SIGKILLed, the master SIGKILLed and restarted, graceful restarts, reloads, and Redis
itself killed and restarted (with an fsync'd append-only file, so Redis keeps what it
acknowledged) — and still every job pushed is handled at least once, and nothing is left
running."""
import os
import random
import signal
import time

import pytest
from conftest import Project, wait_for
from masters import MasterProc
from redis_server import RedisServer

from ssjobs.errors import BrokerUnavailable
from ssjobs.producer import Producer

pytestmark = pytest.mark.slow

CONSUMER = """
    import os, time
    OUT = os.environ["SSJOBS_TEST_OUT"]

    def run(job):
        time.sleep(0.001)
        fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{job.payload}\\n".encode())
        os.close(fd)
"""


def test_chaos_loses_no_job(tmp_path, monkeypatch):
    server = RedisServer(tmp_path / "redis-durable", durable=True)
    (tmp_path / "redis-durable").mkdir()
    server.start()
    out = tmp_path / "out.txt"
    monkeypatch.setenv("SSJOBS_TEST_OUT", str(out))
    (tmp_path / "proj").mkdir()
    project = Project(tmp_path / "proj", server.url)
    project.consumer("soak", CONSUMER)
    project.write_config([{"topic": "q", "consumer": "soak:run", "static_workers": 3,
                           "dynamic_workers": 2, "queue_health_size": 500, "batch_size": 20,
                           "max_retries": 1000, "dynamic_idle_time": 2}],
                         process="heartbeat_ttl = 3")
    project.config.write_text(project.config.read_text().replace("stop_timeout = 10",
                                                                 "stop_timeout = 3"))
    rng = random.Random(int(os.environ.get("SSJOBS_SOAK_SEED", "11")))
    masters: list[MasterProc] = []

    def new_master() -> MasterProc:
        m = MasterProc(project.config, project.data_dir)
        masters.append(m)
        m.start()
        return m

    total = 20_000
    pushed: set[int] = set()
    try:
        m = new_master()
        producer = Producer(server.url, prefix="t")
        deadline = time.time() + 40
        n = 0
        while time.time() < deadline:
            if n < total:  # keep feeding while the chaos goes on
                chunk = list(range(n, min(n + 1000, total)))
                try:
                    producer.push_many("q", chunk)
                    pushed.update(chunk)
                    n += len(chunk)
                except BrokerUnavailable:
                    pass  # Redis is down this moment; those were not acknowledged: retry
            time.sleep(0.4)
            roll = rng.random()
            workers = m.workers()
            if roll < 0.55 and workers:
                os.kill(rng.choice(workers)["pid"], signal.SIGKILL)
            elif roll < 0.65:
                m.signal(signal.SIGKILL)
                m.proc.wait(10)
                m = new_master()
            elif roll < 0.72:
                assert m.stop() == 0
                m = new_master()
            elif roll < 0.80:
                m.signal(signal.SIGHUP)
            elif roll < 0.87:
                server.restart(down_for=rng.uniform(0.2, 1.5))
        while n < total:
            chunk = list(range(n, min(n + 1000, total)))
            producer.push_many("q", chunk)
            pushed.update(chunk)
            n += len(chunk)

        def done() -> set[int]:
            return {int(x) for x in out.read_text().split()} if out.exists() else set()

        wait_for(lambda: done() >= pushed, timeout=120, interval=0.5,
                 what="every pushed job handled")
        assert pushed == set(range(total))
        log = project.log_text()
        assert len(masters) >= 3 and "requeued" in log and "redis" in log  # chaos happened
        assert m.stop() == 0
        assert m.zombies() == []
    finally:
        for master in masters:
            master.kill_all()
        server.stop()
