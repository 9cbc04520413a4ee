"""Job alerts and ERROR-line relaying (docs/consumers.md, "Notifications").

Pure rules are table-tested; the relay is tested in-process and across fork; then real
masters post to a webhook endpoint on 127.0.0.1 (a local http.server in the test).
"""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import Project, wait_for
from masters import MasterProc

from ssjobs import alerts
from ssjobs.alerts import (
    FIRE,
    RECOVERED,
    AlertsExtension,
    Hold,
    Recent,
    Rules,
    Tally,
    TopicView,
    stuck_jobs,
)
from ssjobs.broker import Broker, TopicKeys, connect
from ssjobs.notify import error_sink, relay
from ssjobs.producer import Producer

# -- pure rules -------------------------------------------------------------------------------

# (active, now, expected event) in order, for Hold(after=3, repeat=10)
HOLD_STEPS = [
    (False, 0, None),
    (True, 1, None),        # became true: starts the clock
    (True, 3, None),        # held 2 s < 3
    (True, 4, FIRE),        # held 3 s
    (True, 5, None),
    (True, 13, None),       # 9 s since it fired < repeat
    (True, 14, FIRE),       # repeats while it holds
    (False, 15, RECOVERED),
    (False, 16, None),
    (True, 17, None),       # a new occurrence waits alert_after again
    (False, 18, None),      # cleared before firing: no recovery message
]


def test_hold_fires_after_the_delay_repeats_and_recovers_once() -> None:
    hold = Hold(after=3, repeat=10)
    assert [hold.update(active, now) for active, now, _ in HOLD_STEPS] == [
        event for _, _, event in HOLD_STEPS]


@pytest.mark.parametrize("after, recovers, steps", [
    (0, True, [(True, 0, FIRE), (True, 1, None), (False, 2, RECOVERED)]),
    (0, False, [(True, 0, FIRE), (False, 1, None), (True, 2, FIRE)]),
    (5, True, [(True, 0, None), (False, 4, None), (True, 5, None), (True, 10, FIRE)]),
])
def test_hold_table(after: float, recovers: bool, steps: list) -> None:
    hold = Hold(after=after, repeat=60, recovers=recovers)
    assert [hold.update(a, n) for a, n, _ in steps] == [e for _, _, e in steps]


# (values, now, expected count) in order, for Tally(repeat=10)
TALLY_STEPS = [
    ((0, 0), 0, 0),            # the first values are the baseline
    ((2, 2), 1, 2),            # grew by 2: reported at once
    ((3, 3), 2, 0),            # grew by 1: held back, at most one report per repeat
    ((3, 3), 11, 1),           # ... reported once repeat has passed
    ((1, 3), 12, 0),           # purged: a fall is not a rise
    ((10_000, 50), 30, 9_999),  # the largest rise of the two counters
    ((10_000, 80), 45, 30),    # the list is capped: the lifetime counter still shows growth
]


def test_tally_counts_rises_and_reports_them_at_most_once_per_repeat() -> None:
    tally = Tally(repeat=10)
    assert [tally.update(v, n) for v, n, _ in TALLY_STEPS] == [c for _, _, c in TALLY_STEPS]


def test_recent_is_true_while_a_counter_rose_within_the_window() -> None:
    recent = Recent(window=10)
    steps = [(3, 0, False), (3, 1, False), (4, 2, True), (4, 11, True), (4, 12, False),
             (0, 13, False), (1, 14, True)]
    assert [recent.update(v, n) for v, n, _ in steps] == [e for _, _, e in steps]


@pytest.mark.parametrize("busy, timeout, now, stuck", [
    ([(1, 100.0)], 0, 1000.0, []),                      # job_timeout = 0: no limit
    ([(1, 100.0), (2, 0.0)], 2, 105.0, [(1, 5.0)]),     # 5 s > 2 + grace; pid 2 is between jobs
    ([(1, 100.0)], 2, 100.0 + 2 + alerts.STUCK_GRACE_S, []),  # the grace is not stuck yet
    ([(1, 100.0), (3, 90.0)], 10, 105.0, [(3, 15.0)]),
])
def test_stuck_jobs_table(busy: list, timeout: float, now: float, stuck: list) -> None:
    assert stuck_jobs(busy, timeout, now) == stuck


def rules_run(steps: list[tuple[float, list[TopicView], float | None]], *, alert_after: float = 2,
              repeat: float = 100) -> list[tuple[float, str, str, bool]]:
    rules = Rules(alert_after=alert_after, repeat=repeat, node="host-a:1")
    return [(now, a.rule, a.topic, a.recovered)
            for now, views, down in steps for a in rules.evaluate(views, down, now)]


def view(**kw: Any) -> TopicView:
    return TopicView(**{"topic": "q", "health": 10, "backlog": 0, "dead": (0, 0), **kw})


def test_rules_backlog_above_health_for_alert_after_then_recovered() -> None:
    steps = [(t, [view(backlog=b)], None) for t, b in
             [(0, 5), (1, 50), (2, 50), (3, 11), (4, 10), (5, 50), (6, None), (7, 50), (8, 50)]]
    assert rules_run(steps, alert_after=2) == [
        (3, "backlog", "q", False), (4, "backlog", "q", True),
        (7, "backlog", "q", False),  # None (Redis down) neither fires nor clears
    ]


def test_rules_backlog_is_never_checked_with_health_zero() -> None:
    assert rules_run([(t, [view(health=0, backlog=10**6)], None) for t in range(5)]) == []


def test_rules_dead_letters_growing_one_alert_per_repeat_with_the_count() -> None:
    rules = Rules(alert_after=0, repeat=10, node="h")
    seen = []
    for now, dead in [(0, (5, 5)), (1, (5, 5)), (2, (8, 8)), (3, (9, 9)), (13, (9, 9))]:
        seen += [(now, a.title) for a in rules.evaluate([view(dead=dead)], None, now)]
    assert seen == [(2, "3 new dead letters on q"), (13, "1 new dead letter on q")]


def test_rules_crash_loop_needs_three_quick_crashes_and_recovers_when_quiet() -> None:
    quiet = alerts.QUIET_AFTER_S
    steps = [(0, [view(crashes=0)], None), (1, [view(crashes=1)], None),
             (2, [view(crashes=2)], None), (3, [view(crashes=3)], None),
             (4, [view(crashes=4)], None), (4 + quiet, [view(crashes=4)], None)]
    assert rules_run(steps) == [(3, "crash_loop", "q", False),
                                (4 + quiet, "crash_loop", "q", True)]


def test_rules_a_consumer_that_cannot_start_is_reported_as_such_not_as_a_crash_loop() -> None:
    steps = [(t, [view(crashes=t, startup_failures=t)], None) for t in range(6)]
    assert rules_run(steps) == [(1, "consumer_import", "q", False)]


def test_rules_stuck_job_fires_once_per_occurrence_without_recovery() -> None:
    stuck = view(stuck=((42, "01JOB", 9.0),), job_timeout=5)
    steps = [(0, [view()], None), (1, [stuck], None), (2, [stuck], None), (3, [view()], None),
             (4, [stuck], None)]
    assert rules_run(steps) == [(1, "stuck_job", "q", False), (4, "stuck_job", "q", False)]


def test_rules_redis_down_for_alert_after_is_a_local_alert() -> None:
    rules = Rules(alert_after=5, repeat=100, node="h")
    got = [(now, a.rule, a.recovered, a.fleet)
           for now, down in [(0, None), (1, 0.0), (3, 2.0), (6, 5.0), (7, 6.0), (8, None)]
           for a in rules.evaluate([], down, now)]
    assert got == [(6, "redis_down", False, False), (8, "redis_down", True, False)]


# -- fleet de-dup: SET NX EX on the topic's Redis ---------------------------------------------

def fake_master(redis_url: str, node: str) -> Any:
    client = connect(redis_url)
    notifier = SimpleNamespace(kind="webhook", params={"url": "http://127.0.0.1:9/"},
                               alert_after=0, repeat_interval=30, log_notify=False,
                               jobs_check_notify=True)
    return SimpleNamespace(cfg=SimpleNamespace(notifier=notifier), node=node,
                           topics={"q": SimpleNamespace(broker=Broker(client, "t", "q"))})


def test_one_host_claims_a_firing_alert_and_only_it_sends_the_recovery(rclient,
                                                                        redis_url) -> None:
    a_master, b_master = fake_master(redis_url, "a:1"), fake_master(redis_url, "b:2")
    a, b = AlertsExtension(a_master), AlertsExtension(b_master)
    fire = alerts.Alert("backlog", "q", "t", "x")
    recovered = alerts.Alert("backlog", "q", "t", "x", recovered=True)
    assert (a._may_send(a_master, fire), b._may_send(b_master, fire)) == (True, False)
    assert rclient.get("t:alert:backlog:q") == b"a:1"
    assert 28_000 < rclient.pttl("t:alert:backlog:q") <= 29_000  # repeat_interval - 1 tick
    assert (a._may_send(a_master, recovered), b._may_send(b_master, recovered)) == (True, False)
    down = alerts.Alert("redis_down", "", "t", "x", fleet=False)
    assert a._may_send(a_master, down) and b._may_send(b_master, down)


def test_error_lines_that_differ_only_in_job_id_and_numbers_are_one_message() -> None:
    keys: list[str] = []
    sink = error_sink(SimpleNamespace(submit=lambda *a, key, **kw: keys.append(key)))
    for job_id, attempt in (("01AAA", 1), ("01BBB", 2)):
        sink({"logger": "ssjobs.worker", "level": "ERROR", "role": "worker q #1",
              "job_id": job_id, "topic": "q", "attempt": attempt,
              "msg": f"job {job_id} on 'q' failed (attempt {attempt}): KeyError: 'x'\n tb"})
    sink({"logger": "ssjobs.worker", "level": "ERROR", "role": "worker q #1",
          "msg": "job 01CCC on 'q' failed (attempt 1): ValueError: bad"})
    assert keys[0] == keys[1] != keys[2]


# -- the relay: worker ERROR lines to the master ----------------------------------------------

class Collect:
    def __init__(self, block: threading.Event | None = None) -> None:
        self.records: list[dict] = []
        self.block = block

    def __call__(self, record: dict) -> None:
        if self.block is not None:
            self.block.wait(10)
        self.records.append(record)


@pytest.fixture
def channel():
    """A fresh relay channel for this test, closed after it (it is per process)."""
    relay.close_channel()
    yield relay.open_channel()
    relay.uninstall_worker_forwarder()
    relay.close_channel()


def test_relay_delivers_error_records_with_their_fields(channel) -> None:
    sink = Collect()
    server = relay.RelayServer(sink)
    try:
        assert relay.install_worker_forwarder(os.getpid())
        log = logging.getLogger("ssjobs.worker")
        log.warning("not an error: not forwarded")
        log.error("job %s failed", "j1", extra={"job_id": "j1", "topic": "q", "attempt": 2})
        (record,) = wait_for(lambda: sink.records, what="the forwarded record")
    finally:
        server.close()
    assert (record["msg"], record["job_id"], record["topic"], record["attempt"]) == (
        "job j1 failed", "j1", "q", 2)
    assert record["level"] == "ERROR" and record["pid"] == os.getpid()


def test_without_a_channel_from_that_master_nothing_is_forwarded() -> None:
    relay.close_channel()
    assert not relay.install_worker_forwarder(os.getpid())  # no channel opened
    relay.open_channel()
    try:
        assert not relay.install_worker_forwarder(os.getppid())  # not the channel's owner
    finally:
        relay.close_channel()


def test_a_worker_never_blocks_when_the_relay_is_full(channel) -> None:
    log = logging.getLogger("ssjobs.worker")
    assert relay.install_worker_forwarder(os.getpid())
    release = threading.Event()
    server = relay.RelayServer(Collect(block=release))  # reads one, then hangs
    try:
        started = time.monotonic()
        for i in range(2000):
            log.error("burst %d", i)
        assert time.monotonic() - started < 2.0
        assert relay._forwarder is not None and relay._forwarder.dropped > 100
    finally:
        release.set()
        server.close()


def test_a_forked_worker_sends_through_the_channel_but_cannot_read_it(channel) -> None:
    # given a master's relay
    sink = Collect()
    server = relay.RelayServer(sink)
    pid = os.fork()
    if pid == 0:  # a worker: forwards its ERROR lines, holds no receiving end
        code = 1
        try:
            if relay.install_worker_forwarder() and channel.receiver.fileno() == -1:
                logging.getLogger("ssjobs.worker").error("from the worker")
                code = 0
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        record = wait_for(lambda: [r for r in sink.records if r["pid"] == pid],
                          what="the worker's record")[0]
        assert record["msg"] == "from the worker"
    finally:
        server.close()
    # and a reload's new server reads the same channel
    again = relay.RelayServer(sink)
    try:
        relay.install_worker_forwarder(os.getpid())
        logging.getLogger("ssjobs.worker").error("after the reload")
        wait_for(lambda: [r for r in sink.records if r["msg"] == "after the reload"],
                 what="a record after the reload")
    finally:
        again.close()


def test_garbage_datagrams_are_refused(channel) -> None:
    sink = Collect()
    server = relay.RelayServer(sink)
    try:
        channel.sender.send(b"not json")
        channel.sender.send(b'{"no": "msg"}')
        channel.sender.send(relay.encode({"msg": "ok", "level": "ERROR"}))
        wait_for(lambda: sink.records, what="the good record")
    finally:
        server.close()
    assert [r["msg"] for r in sink.records] == ["ok"] and server.refused == 2


def test_a_relay_that_cannot_be_set_up_is_an_error_that_status_shows(
        monkeypatch, caplog, tmp_path) -> None:
    from ssjobs import problems, status
    from ssjobs.console import statusview
    from ssjobs.runtime import RuntimeFiles

    # given a master that cannot open the channel (out of file descriptors)
    relay.close_channel()

    def no_more_fds(*_a: Any, **_kw: Any) -> Any:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(socket, "socketpair", no_more_fds)
    # when it prepares the relay before forking its workers
    with caplog.at_level(logging.ERROR, logger="ssjobs"):
        assert not relay.prepare_channel()
    # then it says so at ERROR, and the status it shows (and snapshots) carries it
    assert any(r.levelno == logging.ERROR and "relay cannot open the channel" in r.getMessage()
               for r in caplog.records)
    try:
        shown = status.collect_status(None, RuntimeFiles(tmp_path), running_pid=os.getpid(),
                                      master_info={"pid": os.getpid()})
        assert "Too many open files" in shown["problems"]["relay"]
        from rich.console import Console

        console = Console(width=200, record=True, file=io.StringIO())
        console.print(statusview.render_status(shown))
        assert "Too many open files" in console.export_text()
    finally:
        problems.clear(relay.PROBLEM)


# -- real masters and a real webhook endpoint -------------------------------------------------

class Hook:
    """A webhook endpoint on a free 127.0.0.1 port; records each JSON body it receives."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.bodies: list[dict] = []
        self.status, self.delay = status, delay
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                body["_at"] = time.monotonic()
                hook.bodies.append(body)
                if hook.delay:
                    hook.release.wait(hook.delay)
                self.send_response(hook.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up on a slow answer

        self.httpd = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def alerts(self, rule: str) -> list[dict]:
        return [b for b in self.bodies if b.get("alert") == rule]

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


CONSUMERS = """
    import os, time

    HOLD = os.environ.get("SSJOBS_TEST_HOLD", "")

    def boom(job):
        raise RuntimeError("boom: the mail server said no")

    def held(job):
        while HOLD and os.path.exists(HOLD):
            time.sleep(0.02)

    def stuck(job):
        import signal
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # deaf to its own timeout
        time.sleep(30)

    def tenth(job):
        time.sleep(0.0005)  # ~0.5 s per 2,000 jobs on two workers: long enough to measure
        if job.payload % 10 == 0:
            raise ValueError("every tenth job fails")
"""


def notifier_toml(url: str, **settings: Any) -> str:
    values = {"class": "webhook", "alert_after": 1, "repeat_interval": 2, **settings}
    lines = ["[notifier]", *(f"{k} = {json.dumps(v)}" for k, v in values.items()),
             "[notifier.params]", f"url = {json.dumps(url)}", ""]
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # the masters post to 127.0.0.1 directly


@pytest.fixture
def hooks():
    made: list[Hook] = []

    def make(**kw: Any) -> Hook:
        made.append(Hook(**kw))
        return made[-1]

    yield make
    for hook in made:
        hook.stop()


@pytest.fixture
def masters():
    """Start a master for a Project; every one is killed (by pid) at the end."""
    started: list[MasterProc] = []

    def start(project: Project, jobs: list[dict], extra: str = "") -> MasterProc:
        project.consumer("c", CONSUMERS)
        project.write_config(jobs, extra=extra)
        master = MasterProc(project.config, project.data_dir)
        started.append(master)
        master.start()
        if extra:  # extensions start just after "ready": wait for the notifier
            wait_for(lambda: "notifier webhook:" in project.log_text(), what="notifier started")
        return master

    yield start
    for master in started:
        master.kill_all()


@pytest.fixture
def hold_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "hold"
    path.touch()
    monkeypatch.setenv("SSJOBS_TEST_HOLD", str(path))
    return path


def test_a_workers_error_line_and_dead_letters_reach_the_webhook(project, masters, hooks,
                                                                  redis_url) -> None:
    # given a master whose consumer always raises, with a webhook notifier
    hook = hooks()
    masters(project, [{"topic": "bad", "consumer": "c:boom", "max_retries": 0}],
            extra=notifier_toml(hook.url, repeat_interval=30))
    # when three jobs fail
    with Producer(redis_url, prefix="t") as producer:
        producer.push_many("bad", [1, 2, 3])
    # then the worker's ERROR line arrives once (the same failure is de-duplicated) ...
    line = wait_for(lambda: [b for b in hook.bodies if b.get("job_id")], what="error line")[0]
    assert "(worker bad #1)" in line["title"] and line["level"] == "error"
    assert line["topic"] == "bad" and "RuntimeError: boom" in line["text"]
    # ... and a dead-letter alert names the topic and the rule
    dead = wait_for(lambda: hook.alerts("dead_letters"), what="dead-letter alert")[0]
    assert dead["topic"] == "bad" and "dead-letter list" in dead["text"]
    assert len([b for b in hook.bodies if b.get("job_id")]) == 1


def test_backlog_alert_after_alert_after_then_recovered(project, masters, hooks, hold_file,
                                                         redis_url) -> None:
    # given one worker that cannot finish its job, and queue_health_size = 2
    hook = hooks()
    masters(project, [{"topic": "slow", "consumer": "c:held", "queue_health_size": 2,
                       "batch_size": 1}], extra=notifier_toml(hook.url))
    # when ten jobs wait
    with Producer(redis_url, prefix="t") as producer:
        producer.push_many("slow", list(range(10)))
    pushed = time.monotonic()
    # then the backlog alert comes once it held alert_after (1 s) ...
    (alert,) = wait_for(lambda: hook.alerts("backlog"), what="backlog alert")
    assert alert["_at"] - pushed >= 0.9
    assert (alert["topic"], alert["level"]) == ("slow", "warning") and "9 jobs" in alert["text"]
    # ... and "recovered" once the jobs drain
    hold_file.unlink()
    wait_for(lambda: len(hook.alerts("backlog")) >= 2, what="recovered")
    recovered = hook.alerts("backlog")[-1]
    assert recovered["level"] == "info" and recovered["title"].startswith("recovered")


def test_two_masters_send_one_backlog_alert_per_condition(tmp_path, masters, hooks, hold_file,
                                                         redis_url, rclient) -> None:
    # given two hosts (two data_dirs) on one Redis, both serving the topic
    hook = hooks()
    extra = notifier_toml(hook.url, repeat_interval=30)
    job = {"topic": "slow", "consumer": "c:held", "queue_health_size": 2, "batch_size": 1}
    nodes = set()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        master = masters(Project(tmp_path / name, redis_url), [job], extra=extra)
        nodes.add(f"{socket.gethostname()}:{master.pid}")
    # when the backlog stays high on both
    with Producer(redis_url, prefix="t") as producer:
        producer.push_many("slow", list(range(10)))
    wait_for(lambda: hook.alerts("backlog"), what="backlog alert")
    time.sleep(2.5)  # both masters have seen it for longer than alert_after by now
    # then one alert was sent, by the host that holds the claim
    (alert,) = hook.alerts("backlog")
    claimer = rclient.get("t:alert:backlog:slow").decode()
    assert claimer.rsplit(":", 1)[0] in nodes   # hostname:pid:nonce of one of the two
    # and only that host sends the recovery
    hold_file.unlink()
    wait_for(lambda: len(hook.alerts("backlog")) >= 2, what="recovered")
    time.sleep(1.5)
    assert [a["level"] for a in hook.alerts("backlog")] == ["warning", "info"]


def drain_seconds(master_project: Project, redis_url: str, rclient, rounds: int = 2) -> float:
    """Fastest of ``rounds`` drains of 2,000 jobs (every tenth fails) through the master."""
    stats = TopicKeys("t", "q").stats
    best = float("inf")
    for n in range(1, rounds + 1):
        with Producer(redis_url, prefix="t") as producer:
            started = time.monotonic()
            producer.push_many("q", list(range(2000)))

        def done(n: int = n) -> bool:
            counts = {k: int(v) for k, v in rclient.hgetall(stats).items()}
            return counts.get(b"processed", 0) + counts.get(b"failed", 0) >= 2000 * n

        wait_for(done, timeout=30, interval=0.005, what="drain")
        best = min(best, time.monotonic() - started)
    return best


def test_an_endpoint_that_hangs_or_fails_does_not_slow_a_2000_job_drain(
        tmp_path, masters, hooks, redis_url, rclient) -> None:
    # given the same topic drained with no notifier, then through a webhook that hangs 30 s,
    # then through one that answers 500, while every tenth job fails (ERROR lines) and the
    # backlog alerts at once
    job = {"topic": "q", "consumer": "c:tenth", "static_workers": 2, "max_retries": 0,
           "queue_health_size": 10}
    timings = {}
    for name, hook in [("none", None), ("hangs", hooks(delay=30)), ("500", hooks(status=500))]:
        rclient.flushall()
        (tmp_path / name).mkdir()
        project = Project(tmp_path / name, redis_url)
        extra = notifier_toml(hook.url, alert_after=0) if hook else ""
        master = masters(project, [job], extra=extra)
        # when 2,000 jobs are drained
        timings[name] = drain_seconds(project, redis_url, rclient)
        if hook is not None:
            assert wait_for(lambda h=hook: h.bodies, what="a notification attempt")
        # then a stuck notifier does not hold up the stop either
        started = time.monotonic()
        assert master.stop(timeout=20) == 0
        assert time.monotonic() - started < 10
    # and the drains took about as long with the bad endpoints as without a notifier
    assert timings["hangs"] < 1.5 * timings["none"], timings
    assert timings["500"] < 1.5 * timings["none"], timings


def test_a_reload_restarts_the_relay_and_errors_still_arrive(project, masters, hooks,
                                                            redis_url) -> None:
    # given a master relaying a failing consumer's ERROR lines
    hook = hooks()
    master = masters(project, [{"topic": "bad", "consumer": "c:boom", "max_retries": 0,
                                "static_workers": 2}], extra=notifier_toml(hook.url))
    producer = Producer(redis_url, prefix="t")
    producer.push("bad", 1)
    wait_for(lambda: [b for b in hook.bodies if b.get("job_id")], what="first error line")
    # when the config is reloaded (the extension stops and starts again, workers replaced)
    old = {w["pid"] for w in master.workers()}
    master.signal(signal.SIGHUP)
    wait_for(lambda: project.log_text().count("notifier webhook:") == 2, what="restarted")
    wait_for(lambda: (ws := master.workers()) and len(ws) == 2 and all(
        w["pid"] not in old and w["state"] == "idle" for w in ws), what="new workers")
    # then the new workers' ERROR lines reach the endpoint through the new relay
    producer.push("bad", 2)
    wait_for(lambda: len([b for b in hook.bodies if b.get("job_id")]) >= 2, what="error line")
    producer.close()
    assert "could not start" not in project.log_text()


def test_a_reload_whose_consumer_cannot_be_imported_is_refused_with_an_alert(
        project, masters, hooks, redis_url) -> None:
    # given a healthy master with alerts
    hook = hooks()
    extra = notifier_toml(hook.url)
    master = masters(project, [{"topic": "q", "consumer": "c:held"}], extra=extra)
    pids = {w["pid"] for w in master.workers()}
    # when a reload points the topic at a consumer that does not exist
    project.write_config([{"topic": "q", "consumer": "c:no_such_function"}], extra=extra)
    master.signal(signal.SIGHUP)
    # then one reload_refused alert names the topic, the consumer and the reason ...
    alert = wait_for(lambda: hook.alerts("reload_refused"), what="reload alert")[0]
    assert alert["topic"] == "q" and "c:no_such_function" in alert["text"]
    assert "cannot import its consumer" in alert["text"] and alert["level"] == "error"
    # ... the new worker's own ERROR line arrives too, and the old worker keeps serving
    assert wait_for(lambda: [b for b in hook.bodies if "no_such_function" in b["text"]
                             and "(worker q #1)" in b["title"]], what="the worker's error")
    assert {w["pid"] for w in master.workers()} == pids
    with Producer(redis_url, prefix="t") as producer:
        producer.push("q", 1)
    wait_for(lambda: Broker(connect(redis_url), "t", "q").counts()["processed"] == 1,
             what="the old worker ran the job")
    assert hook.alerts("consumer_import") == [] and hook.alerts("crash_loop") == []


def test_a_job_stuck_past_its_timeout_alerts_before_the_master_kills_it(project, masters,
                                                                        hooks, redis_url) -> None:
    # given a consumer that ignores the worker's own timeout, and job_timeout = 1
    hook = hooks()
    masters(project, [{"topic": "q", "consumer": "c:stuck", "job_timeout": 1}],
            extra=notifier_toml(hook.url))
    # when a job runs
    with Producer(redis_url, prefix="t") as producer:
        job_id = producer.push("q", 1)
    # then a stuck_job alert names the job while it is still running
    alert = wait_for(lambda: hook.alerts("stuck_job"), what="stuck alert")[0]
    assert alert["topic"] == "q" and job_id in alert["text"]
    assert "job_timeout = 1 s" in alert["text"]


def status_json(project: Project) -> dict:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "ssjobs", "status", "--json", "-c",
                          str(project.config)], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)


def test_metrics_that_cannot_listen_is_one_error_line_that_reaches_the_notifier(
        project, masters, hooks) -> None:
    """Issue 13.1: the metrics ERROR never reached the notifier (it started first)."""
    from redis_server import free_port

    hook = hooks()
    port = free_port()
    with socket.socket() as taken:
        # given the metrics port is taken by another program
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        # when the master starts with a webhook notifier and metrics on that port
        masters(project, [{"topic": "q", "consumer": "c:held"}],
                extra=notifier_toml(hook.url) + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        # then the ERROR line reaches the webhook ...
        body = wait_for(lambda: [b for b in hook.bodies if "metrics off" in b["text"]],
                        what="the metrics error")[0]
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in body["text"]
        # ... the log has it once, without a traceback, and status shows metrics off
        log = project.log_text()
        assert log.count("metrics off:") == 1 and "Traceback" not in log
        st = status_json(project)
        assert st["extensions"]["notifier"] == "on"
        assert st["extensions"]["metrics"].startswith("off: cannot listen on")


def test_a_notifier_that_cannot_start_is_one_error_line_and_status_shows_it_off(
        project) -> None:
    """Issue 13.5: a notifier that fails to start logged a traceback; status said nothing."""
    project.consumer("c", CONSUMERS)
    project.consumer("pager", """
        class Pager:
            def __init__(self, **params):
                raise RuntimeError("pager service key rejected")
            def send(self, title, text, level="error", **fields):
                pass
    """)
    project.write_config([{"topic": "q", "consumer": "c:held"}],
                         extra='[notifier]\nclass = "pager:Pager"\n')
    master = MasterProc(project.config, project.data_dir)
    try:
        master.start()
        st = wait_for(lambda: (s := status_json(project)).get("extensions") and s,
                      what="status with extensions")
        assert st["extensions"] == {"notifier": "off: pager service key rejected"}
        log = project.log_text()
        assert "ERROR" in log and "notifier off: pager service key rejected" in log
        assert "Traceback" not in log
    finally:
        master.kill_all()


def test_jobs_of_a_topic_nobody_serves_show_in_status_and_alert(project, masters, hooks,
                                                               redis_url) -> None:
    """Issue 13.4: a typo in a topic name stranded jobs without a word."""
    hook = hooks()
    masters(project, [{"topic": "q", "consumer": "c:held"}], extra=notifier_toml(hook.url))
    # when a producer pushes to a topic no config declares and no worker serves
    with Producer(redis_url, prefix="t") as producer:
        producer.push_many("q.typo", [1, 2])
    # then an orphan_topic alert names it, and status lists it
    alert = wait_for(lambda: hook.alerts("orphan_topic"), 20, what="orphan alert")[0]
    assert alert["topic"] == "q.typo" and "2 jobs wait" in alert["text"]
    st = wait_for(lambda: (s := status_json(project)).get("orphan_topics") and s, 20,
                  what="status with the orphan")
    assert st["orphan_topics"] == {"q.typo": 2}
    # and once the list is gone, the alert recovers
    connect(redis_url).delete(TopicKeys("t", "q.typo").ready)
    recovered = wait_for(lambda: [b for b in hook.alerts("orphan_topic")
                                  if b["title"].startswith("recovered")], 20, what="recovery")
    assert recovered[0]["topic"] == "q.typo"


def test_rules_orphan_topic_fires_after_alert_after_and_recovers() -> None:
    rules = Rules(alert_after=5, repeat=60, node="h")
    assert rules.evaluate([], None, 0, {"a.typo": 3}) == []
    (fired,) = rules.evaluate([], None, 5, {"a.typo": 3})
    assert (fired.rule, fired.topic, fired.level) == ("orphan_topic", "a.typo", "warning")
    assert rules.evaluate([], None, 6, {"a.typo": 4}) == []       # once per repeat
    (back,) = rules.evaluate([], None, 7, {})
    assert back.recovered and back.topic == "a.typo"


def test_orphan_key_names_and_a_prefix_with_glob_characters() -> None:
    from ssjobs.orphans import ready_pattern, topic_of

    assert ready_pattern("app[1]*") == r"app\[1\]\*:{*}:ready"
    assert topic_of(b"t:{mail.send}:ready", "t") == "mail.send"
    assert topic_of(b"t:{a:b}:ready", "t") == "a:b"
    assert topic_of(b"t:{q}:inflight:h:1:2", "t") is None
    assert topic_of(b"other:{q}:ready", "t") is None
