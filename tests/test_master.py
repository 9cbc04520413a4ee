"""The master under attack: real forks, real signals, real Redis (docs/design.md)."""
import os
import random
import signal
import textwrap
import time

import pytest
from conftest import nobody_can_run_ssjobs, wait_for
from masters import SERVE, MasterProc, wait_gone

from ssjobs import envelope
from ssjobs.broker import Broker, TopicKeys, connect, nodes_key
from ssjobs.producer import Producer

CONSUMER = """
    import os, time
    OUT = os.environ["SSJOBS_TEST_OUT"]
    VERSION = "v1"
    _leak = []

    def _note(job, extra=""):
        fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{job.id} {job.attempts} {os.getpid()} {VERSION}{extra}\\n".encode())
        os.close(fd)

    def run(job):
        p = job.payload
        if isinstance(p, dict):
            if p.get("crash"):
                os._exit(1)
            if p.get("leak"):
                _leak.append(bytearray(p["leak"] * 1024 * 1024))
            time.sleep(p.get("sleep", 0))
        _note(job)

    class Broken:
        def setup(self):
            raise RuntimeError("cannot connect to the mail server")
        def consume(self, job):
            pass
"""


@pytest.fixture
def env(project, monkeypatch, tmp_path):
    out = tmp_path / "out.txt"
    monkeypatch.setenv("SSJOBS_TEST_OUT", str(out))
    project.consumer("rec", CONSUMER)
    masters = []

    def make(jobs, **kw):
        project.write_config(jobs, **kw)
        m = MasterProc(project.config, project.data_dir)
        masters.append(m)
        return m

    yield project, out, make
    for m in masters:
        m.kill_all()


def runs(out):
    if not out.exists():
        return []
    return [line.split() for line in out.read_text().splitlines()]


def ids_done(out):
    return {r[0] for r in runs(out)}


def stats(rclient, topic="q"):
    return {k.decode(): int(v) for k, v in rclient.hgetall(TopicKeys("t", topic).stats).items()}


def test_start_spawns_static_workers_and_stop_leaves_nothing(env, rclient):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run", "static_workers": 3},
              {"topic": "r", "consumer": "rec:run", "static_workers": 1}])
    m.start()
    workers = wait_for(lambda: len(m.workers()) == 4 and m.workers())
    assert sorted((w["topic"], w["kind"]) for w in workers) == [
        ("q", "static")] * 3 + [("r", "static")]
    assert all(w["state"] == "idle" for w in workers)
    pids = [w["pid"] for w in workers]
    assert sorted(pid for pid, _ in m.children()) == sorted(pids)
    with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
        assert f.read().startswith(b"ssjobs: worker ")
    assert m.files.read_pid() == m.pid and m.files.is_locked()
    assert m.stop() == 0
    assert wait_gone(pids, 5) == []
    assert not m.files.pid_path.exists() and not m.files.scoreboard_path.exists()
    assert not m.files.is_locked()
    assert m.files.read_snapshot()["running"] is False
    assert rclient.zcard(nodes_key("t")) == 0


def test_double_start_is_refused_naming_the_running_pid(env):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run"}])
    m.start()
    second = MasterProc(project.config, project.data_dir)
    ok, message = second.start(expect_ok=False)
    assert not ok and f"already running (pid {m.pid})" in message
    assert second.proc.wait(10) == 1
    assert m.proc.poll() is None


def test_sigkill_random_workers_during_a_drain_loses_nothing(env, rclient):
    project, out, make = env
    # max_retries is high: a job whose worker is shot under it 4 times is otherwise poison
    m = make([{"topic": "q", "consumer": "rec:run", "static_workers": 4, "batch_size": 20,
               "max_retries": 100}])
    ids = Producer(project.redis_url, prefix="t").push_many("q", [{"sleep": 0.003}] * 5000)
    m.start()
    rng = random.Random(7)
    kills = 0
    while len(ids_done(out)) < 4000 and kills < 12:
        time.sleep(0.25)
        workers = m.workers()
        if workers:
            os.kill(rng.choice(workers)["pid"], signal.SIGKILL)
            kills += 1
        if m.zombies():  # one may exist between SIGCHLD and the next reap: not for long
            wait_for(lambda: not m.zombies(), timeout=2, what="zombies reaped")
    wait_for(lambda: ids_done(out) >= set(ids), timeout=60, what="all 5000 handled")
    assert kills >= 5
    handled = [r[0] for r in runs(out)]
    assert set(handled) == set(ids)  # at-least-once: duplicates allowed, nothing lost
    assert len(handled) - len(ids) <= kills * 20  # redone at most the in-flight batches
    wait_for(lambda: len(m.workers()) == 4, what="killed workers replaced")
    assert "requeued" in project.log_text()
    assert m.zombies() == []


def test_sigkill_master_workers_exit_and_restart_recovers(env, rclient):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run", "static_workers": 3, "batch_size": 10}])
    ids = Producer(project.redis_url, prefix="t").push_many("q", [{"sleep": 0.01}] * 600)
    m.start()
    wait_for(lambda: len(ids_done(out)) > 50)
    pids = [w["pid"] for w in m.workers()]
    m.signal(signal.SIGKILL)
    m.proc.wait(5)
    assert wait_gone(pids, 5) == [], "workers outlived the master"
    # a new master repairs the files, requeues what the old workers held and finishes
    m2 = MasterProc(project.config, project.data_dir)
    m2.start()
    wait_for(lambda: ids_done(out) >= set(ids), timeout=30, what="all 600 after restart")
    wait_for(lambda: not rclient.keys("t:{q}:inflight:*"), what="in-flight lists recovered")
    assert "stale pid file" in project.log_text()
    assert m2.stop() == 0
    m2.kill_all()


def test_poison_job_is_deadlettered_after_max_retries_crashes(env, rclient):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run", "static_workers": 1, "max_retries": 2}])
    p = Producer(project.redis_url, prefix="t")
    before = p.push_many("q", [1, 2])
    poison = p.push("q", {"crash": True})
    after = p.push_many("q", [3, 4])
    m.start()
    dead_key = TopicKeys("t", "q").dead
    wait_for(lambda: rclient.llen(dead_key) == 1, timeout=30, what="poison job dead-lettered")
    job = envelope.decode(rclient.lindex(dead_key, 0))
    assert job.id == poison and job.attempts == 3
    assert job.headers["error"]["reason"] == "crashed"
    wait_for(lambda: ids_done(out) >= set(before + after))
    assert m.proc.poll() is None


def test_a_consumer_that_fails_at_start_fails_the_start_and_the_master_exits(env):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run"},
              {"topic": "bad", "consumer": "rec:Broken", "static_workers": 2}])
    ok, message = m.start(expect_ok=False)
    assert not ok and "'bad'" in message  # start reports the failure ...
    assert m.proc.wait(20) == 1           # ... and the master does not stay half-up


def test_crash_loop_after_start_is_backed_off_and_reported(env):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run"}])
    m.start()
    project.consumer("rec", CONSUMER.replace('if p.get("crash"):', "if True:"))
    for _ in range(6):  # each job kills its worker
        Producer(project.redis_url, prefix="t").push("q", {"crash": True})
    wait_for(lambda: "crash-looping" in project.log_text(), timeout=30)
    log = project.log_text()
    spawned = log.count("exited: exit status 1")
    time.sleep(2)
    assert project.log_text().count("exited: exit status 1") - spawned <= 2  # backing off
    assert m.proc.poll() is None


def test_graceful_stop_lets_busy_workers_finish(env, rclient):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run", "static_workers": 2, "batch_size": 1}])
    ids = Producer(project.redis_url, prefix="t").push_many("q", [{"sleep": 1.5}] * 2)
    m.start()
    wait_for(lambda: sum(w["state"] == "busy" for w in m.workers()) == 2)
    assert m.stop() == 0
    assert ids_done(out) == set(ids)  # both jobs ran to the end
    assert stats(rclient)["processed"] == 2


def test_stop_timeout_requeues_the_cut_off_job_charged(env, rclient):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run", "batch_size": 1}],
             process="stop_timeout = 1")
    project.config.write_text(project.config.read_text().replace("stop_timeout = 10\n", ""))
    job_id = Producer(project.redis_url, prefix="t").push("q", {"sleep": 30})
    m.start()
    wait_for(lambda: any(w["state"] == "busy" for w in m.workers()))
    started = time.time()
    assert m.stop() == 0
    assert time.time() - started < 10
    (raw,) = rclient.lrange(TopicKeys("t", "q").ready, 0, -1)
    job = envelope.decode(raw)
    assert (job.id, job.attempts) == (job_id, 1)


def test_reload_under_load_loses_nothing_and_uses_new_code(env, rclient):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run", "static_workers": 2, "batch_size": 5}])
    p = Producer(project.redis_url, prefix="t")
    ids = p.push_many("q", [{"sleep": 0.005}] * 1500)
    m.start()
    wait_for(lambda: len(ids_done(out)) > 100)
    project.consumer("rec", CONSUMER.replace('VERSION = "v1"', 'VERSION = "v2"'))
    m.signal(signal.SIGHUP)
    more = p.push_many("q", [{"sleep": 0.005}] * 500)
    wait_for(lambda: ids_done(out) >= set(ids + more), timeout=60)
    versions = [r[3] for r in runs(out)]
    assert versions[-1] == "v2"
    assert "reloaded config" in project.log_text()
    assert len(m.workers()) == 2


def test_reload_with_broken_consumer_code_keeps_the_healthy_workers(env, rclient):
    """Issue 13.2: a reload with code that cannot import replaced healthy workers by
    crash-looping ones. Now one new worker per topic goes first."""
    project, out, make = env
    project.consumer("other", "def run(job):\n    pass\n")
    m = make([{"topic": "q", "consumer": "rec:run", "static_workers": 2},
              {"topic": "r", "consumer": "other:run"}])
    m.start()
    q_pids = {w["pid"] for w in m.workers() if w["topic"] == "q"}
    r_pids = {w["pid"] for w in m.workers() if w["topic"] == "r"}
    # when q's code breaks and the master reloads
    project.consumer("rec", textwrap.dedent(CONSUMER) + "\ndef broken(:\n")
    m.signal(signal.SIGHUP)
    # then the reload is refused for q, with the reason, and q keeps its two workers ...
    wait_for(lambda: "reload refused for topic 'q'" in project.log_text(), 30)
    log = project.log_text()
    assert "cannot import its consumer" in log and "SyntaxError" in log
    wait_for(lambda: {w["pid"] for w in m.workers() if w["topic"] == "r"}.isdisjoint(r_pids),
             15, what="r's worker replaced")  # ... while the other topic reloaded
    assert {w["pid"] for w in m.workers() if w["topic"] == "q"} == q_pids
    # ... which still run the old code
    job_id = Producer(project.redis_url, prefix="t").push("q", {})
    wait_for(lambda: job_id in ids_done(out), 10, what="the job done by an old worker")
    assert {r[2] for r in runs(out) if r[0] == job_id} <= {str(p) for p in q_pids}
    assert "crash-looping" not in project.log_text()


def test_reload_whose_new_setup_fails_is_refused_and_a_new_bad_topic_is_not_added(env):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run"}])
    m.start()
    pids = {w["pid"] for w in m.workers()}
    project.write_config([{"topic": "q", "consumer": "rec:Broken"},
                          {"topic": "new", "consumer": "rec:no_such_function"}])
    m.signal(signal.SIGHUP)
    wait_for(lambda: project.log_text().count("reload refused for topic") == 2, 30)
    log = project.log_text()
    assert "topic 'q': the new worker's setup() failed" in log
    assert "cannot connect to the mail server" in log
    assert "topic 'new': the new worker cannot import its consumer" in log
    assert "the topic is not added" in log
    assert {w["pid"] for w in m.workers()} == pids and m.proc.poll() is None


def test_a_reload_whose_new_worker_is_not_ready_in_time_is_refused(env):
    project, out, make = env
    project.consumer("slow", """
        import time
        class Slow:
            def setup(self):
                time.sleep(60)
            def consume(self, job):
                pass
    """)
    m = make([{"topic": "q", "consumer": "rec:run"}])
    # a master whose canaries get 2 s instead of 30 (the same code path, sooner)
    m.serve_code = SERVE.replace("from ssjobs.master import serve;",
                                 "from ssjobs.master import serve; import ssjobs.reloading as r; "
                                 "r.CANARY_TIMEOUT_S = 2;")
    m.start()
    pids = {w["pid"] for w in m.workers()}
    project.write_config([{"topic": "q", "consumer": "slow:Slow"}])
    m.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused for topic 'q'" in project.log_text(), 20)
    assert "the new worker was not ready within 2 s" in project.log_text()
    assert {w["pid"] for w in m.workers()} == pids  # the late one was killed, the old kept


def test_reload_with_invalid_config_keeps_the_old_one(env):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run", "static_workers": 2}])
    m.start()
    pids = {w["pid"] for w in m.workers()}
    project.config.write_text(project.config.read_text().replace("static_workers = 2",
                                                                 "static_workers = 0"))
    m.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in project.log_text())
    assert {w["pid"] for w in m.workers()} == pids
    assert m.proc.poll() is None


def test_reload_adds_and_removes_topics(env):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run"}])
    m.start()
    project.write_config([{"topic": "r", "consumer": "rec:run", "static_workers": 2}])
    m.signal(signal.SIGHUP)
    wait_for(lambda: sorted(w["topic"] for w in m.workers()) == ["r", "r"], timeout=15)


def test_dynamic_workers_scale_up_with_backlog_and_retire_when_idle(env):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run", "static_workers": 1, "dynamic_workers": 3,
               "queue_health_size": 10, "dynamic_idle_time": 1, "batch_size": 1}])
    m.start()
    Producer(project.redis_url, prefix="t").push_many("q", [{"sleep": 0.02}] * 400)
    wait_for(lambda: sum(w["kind"] == "dynamic" for w in m.workers()) == 3, timeout=10,
             what="3 dynamic workers")
    wait_for(lambda: len(ids_done(out)) == 400, timeout=30)
    wait_for(lambda: [w["kind"] for w in m.workers()] == ["static"], timeout=15,
             what="dynamic workers retired")
    assert "exited: idle" in project.log_text()


@pytest.mark.parametrize("limit, payloads, reason", [
    ({"max_consumer_count": 10}, [1] * 35, "recycle-count"),
    ({"max_execute_time": 1}, [{"sleep": 0.1}] * 25, "recycle-time"),
    ({"max_memory_mb": 60}, [{"leak": 30, "sleep": 0.6}] * 4, "recycle-memory"),
])
def test_workers_are_recycled_and_replaced(env, limit, payloads, reason):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run", "batch_size": 5, **limit}])
    m.start()
    ids = Producer(project.redis_url, prefix="t").push_many("q", payloads)
    wait_for(lambda: ids_done(out) >= set(ids), timeout=30)
    wait_for(lambda: f"exited: {reason}" in project.log_text(), timeout=10)
    pids = {r[2] for r in runs(out)}
    assert len(pids) >= 2
    wait_for(lambda: len(m.workers()) == 1)
    if reason == "recycle-count":
        per_worker = [sum(1 for r in runs(out) if r[2] == pid) for pid in pids]
        assert max(per_worker) <= 10


def test_the_soft_job_timeout_interrupts_a_stuck_job_and_charges_it(env, rclient):
    # (the hard kill, for a consumer that swallows the soft timeout, is proven in
    # test_delivery.py::test_a_consumer_that_swallows_the_soft_timeout_is_killed_and_charged)
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run", "job_timeout": 1, "max_retries": 0,
               "batch_size": 1}])
    project.consumer("stuck", """
        import time
        def run(job):
            while True:  # stuck: only the soft timeout (raised in the sleep) ends it
                time.sleep(100)
    """)
    project.config.write_text(project.config.read_text().replace('"rec:run"', '"stuck:run"'))
    job_id = Producer(project.redis_url, prefix="t").push("q", 1)
    m.start()
    dead_key = TopicKeys("t", "q").dead
    wait_for(lambda: rclient.llen(dead_key) == 1, timeout=20)
    job = envelope.decode(rclient.lindex(dead_key, 0))
    assert job.id == job_id
    assert job.headers["error"]["type"] == "JobTimeout"
    assert job.headers["error"]["reason"] == "failed"


def test_repairs_corrupt_pid_file_and_leftover_scoreboard(env):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run"}])
    project.data_dir.mkdir(parents=True)
    (project.data_dir / "ssjobs.pid").write_text("garbage\x00")
    (project.data_dir / "scoreboard.shm").write_bytes(b"not a scoreboard")
    (project.data_dir / "ssjobs.lock").write_text("")  # stale lock file, nobody holds it
    m.start()
    assert m.files.read_pid() == m.pid
    log = project.log_text()
    assert "stale pid file (corrupt)" in log and "leftover scoreboard" in log
    assert len(m.workers()) == 1


def test_dead_host_inflight_is_recovered_by_a_surviving_master(env, rclient):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run"}], process="heartbeat_ttl = 2")
    # another host took two jobs, registered its worker and then vanished
    broker = Broker(connect(project.redis_url), "t", "q")
    ids = Producer(project.redis_url, prefix="t").push_many("q", [1, 2])
    broker.register_worker("otherhost:99:cafe0001/100-1")
    broker.settle("otherhost:99:cafe0001/100-1", 0, take=2)
    rclient.sadd(nodes_key("t"), "otherhost:99:cafe0001")  # known, but its heartbeat key is gone
    m.start()
    wait_for(lambda: ids_done(out) == set(ids), timeout=20)
    assert "host otherhost:99:cafe0001 is gone" in project.log_text()
    assert not rclient.sismember(nodes_key("t"), "otherhost:99:cafe0001")


def test_no_zombies_while_workers_churn(env):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run", "static_workers": 3,
               "max_consumer_count": 2, "batch_size": 1}])
    m.start()
    Producer(project.redis_url, prefix="t").push_many("q", list(range(60)))
    deadline = time.time() + 15
    while len(ids_done(out)) < 60 and time.time() < deadline:
        zombies = m.zombies()
        if zombies:  # a zombie may exist between SIGCHLD and the next reap: not for long
            time.sleep(0.5)
            assert not set(zombies) & set(m.zombies()), "zombie not reaped"
        time.sleep(0.05)
    assert len(ids_done(out)) == 60


def test_redis_restart_under_a_running_master(env, redis_server, rclient):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run", "static_workers": 2}])
    m.start()
    Producer(project.redis_url, prefix="t").push_many("q", [1, 2, 3])
    wait_for(lambda: len(ids_done(out)) == 3)
    pids = {w["pid"] for w in m.workers()}
    redis_server.restart(down_for=3.0)
    ids = Producer(project.redis_url, prefix="t").push_many("q", list(range(50)))
    wait_for(lambda: ids_done(out) >= set(ids), timeout=20, what="jobs after the outage")
    assert {w["pid"] for w in m.workers()} == pids  # nobody died or was replaced
    log = project.log_text()
    master_lines = [line for line in log.splitlines() if "master:" in line]
    assert sum("unavailable" in line for line in master_lines) == 1
    assert sum("recovered after" in line for line in master_lines) == 1
    assert m.proc.poll() is None


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
@pytest.mark.skipif(not nobody_can_run_ssjobs(),
                    reason="user nobody cannot run this Python (see .ci/run)")
def test_master_and_workers_drop_privileges_to_process_user(redis_url, tmp_path):
    import pwd
    import shutil
    import tempfile
    from pathlib import Path

    from conftest import Project

    nobody = pwd.getpwnam("nobody")
    root = Path(tempfile.mkdtemp(prefix="ssjobs-user-"))  # outside root's 0700 pytest dir
    try:
        root.chmod(0o755)
        outdir = root / "out"
        outdir.mkdir(mode=0o777)
        outdir.chmod(0o777)
        project = Project(root, redis_url)
        project.consumer("who", f"""
            import os
            def run(job):
                with open({str(outdir / "who.txt")!r}, "a") as f:
                    f.write(f"{{os.getuid()}}\\n")
        """)
        project.write_config([{"topic": "q", "consumer": "who:run", "static_workers": 2}],
                             process='user = "nobody"')
        m = MasterProc(project.config, project.data_dir)
        try:
            m.start()
            Producer(redis_url, prefix="t").push_many("q", [1, 2, 3])
            wait_for(lambda: (outdir / "who.txt").exists()
                     and len((outdir / "who.txt").read_text().split()) == 3)
            assert set((outdir / "who.txt").read_text().split()) == {str(nobody.pw_uid)}
            for pid in [m.pid] + [w["pid"] for w in m.workers()]:
                with open(f"/proc/{pid}/status") as f:
                    uid_line = next(line for line in f if line.startswith("Uid:"))
                assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
            assert m.stop() == 0
            assert not m.files.pid_path.exists()
        finally:
            m.kill_all()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_stop_while_redis_is_down_is_prompt(env, redis_server):
    project, out, make = env
    m = make([{"topic": "q", "consumer": "rec:run", "static_workers": 3}])
    m.start()
    wait_for(lambda: all(w["state"] == "idle" for w in m.workers()) and m.workers())
    redis_server.stop()   # the workers are now retrying Redis with back-off
    time.sleep(1.5)
    began = time.monotonic()
    try:
        assert m.stop(timeout=30) == 0
        took = time.monotonic() - began
        # every wait of a worker (the blocking fetch, the reconnect back-off) ends on SIGTERM;
        # the master still tries a few seconds to requeue what its workers held
        assert took < 8, took
        assert "did not stop within" not in project.log_text()
    finally:
        redis_server.start(redis_server.port)
