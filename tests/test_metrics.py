"""Job-time percentiles from the scoreboard histograms, and the Prometheus endpoint: in
process with a stand-in master, then scraped over HTTP from a real master and compared with
`ssjobs status --json`."""
from __future__ import annotations

import json
import logging
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest
from conftest import wait_for
from masters import MasterProc, close_on_exec, fd_targets
from prometheus_client.parser import text_string_to_metric_families
from redis_server import free_port

from ssjobs.config import load_config
from ssjobs.errors import ExtensionUnavailable
from ssjobs.metrics import JobTimes, MetricsExtension
from ssjobs.producer import Producer
from ssjobs.scoreboard import (
    BUSY_TOTAL,
    HEADER_SIZE,
    HIST_BUCKETS,
    HIST_OFF,
    IDLE,
    SLOT_SIZE,
    Scoreboard,
    percentiles_ms,
    quantile,
)

WORK = """
def run(job):
    if job.payload == "fail":
        raise ValueError("no")
"""


def hist(**buckets: int) -> list[int]:
    out = [0] * HIST_BUCKETS
    for name, count in buckets.items():
        out[int(name[1:])] = count
    return out


# -- percentiles -----------------------------------------------------------------------------

@pytest.mark.parametrize("h, q, expected", [
    (hist(), 0.5, None),
    (hist(b0=10), 0.5, 0.00005),                 # bucket [0, 100µs): halfway
    (hist(b3=10), 0.5, 0.0006),                  # bucket [400µs, 800µs): halfway
    (hist(b3=10), 0.95, 0.00078),
    (hist(b1=50, b5=50), 0.5, 0.0002),           # the rank ends exactly at a bucket's top
    (hist(b1=50, b5=50), 0.75, 0.0024),          # half of [1.6ms, 3.2ms)
    (hist(b23=4), 0.5, 0.0001 * 2 ** 22),        # overflow: the highest finite bound
    (hist(b15=4), 0.5, 0.0001 * 2 ** 14 * 1.5),  # [1.6 s, 3.3 s): halfway
])
def test_quantile_interpolates_inside_buckets(h, q, expected):
    got = quantile(h, q)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_percentiles_ms():
    assert percentiles_ms(None) == {"p50_ms": None, "p95_ms": None}
    assert percentiles_ms(hist(b3=10)) == {"p50_ms": 0.6, "p95_ms": 0.78}


# -- job times survive workers exiting -------------------------------------------------------

def write_hist(board: Scoreboard, index: int, h: list[int], busy: float) -> None:
    offset = HEADER_SIZE + index * SLOT_SIZE
    struct.pack_into(f"<{HIST_BUCKETS}I", board.buf, offset + HIST_OFF, *h)
    struct.pack_into("<d", board.buf, offset + BUSY_TOTAL[0], busy)


def test_job_times_keep_the_counts_of_workers_that_exited(tmp_path):
    board = Scoreboard.create(tmp_path / "board", 4)
    times = JobTimes()
    board.slot(0).claim(100, "a", 0, 1, 1000.0)
    write_hist(board, 0, hist(b2=5), 0.5)
    board.slot(1).claim(101, "b", 1, 2, 1000.0)
    write_hist(board, 1, hist(b4=1), 0.1)
    times.update(board)
    assert times.totals() == {"a": (hist(b2=5), 0.5), "b": (hist(b4=1), 0.1)}

    write_hist(board, 0, hist(b2=7), 0.7)        # two more jobs, then the worker exits
    times.update(board)
    board.slot(0).release()
    times.update(board)                          # a freed slot keeps its last counts
    assert times.totals()["a"] == (hist(b2=7), 0.7)

    board.slot(0).claim(102, "a", 0, 1, 1005.0)  # a new worker zeroes the slot
    write_hist(board, 0, hist(b9=1), 1.0)
    times.update(board)
    assert times.totals()["a"] == (hist(b2=7, b9=1), pytest.approx(1.7))
    board.close()


# -- the extension, with a stand-in master ---------------------------------------------------

def scrape(port: int) -> dict:
    """{(name, labels as a sorted tuple): value} of every sample."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture
def fake_master(project, tmp_path):
    port = free_port()
    project.write_config([{"topic": "m.a", "consumer": "x:y"}],
                         extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    board = Scoreboard.create(tmp_path / "board", 4)
    board.slot(0).claim(4242, "m.a", 0, 1, time.time())
    board.slot(0).set_state(IDLE)
    write_hist(board, 0, hist(b3=3, b5=1), 0.01)
    master = SimpleNamespace(cfg=load_config(project.config), topics={"m.a": None},
                             workers={4242: SimpleNamespace(topic="m.a", kind=0, slot=0)},
                             board=board, restarts={"crash": 2, "stopped": 1},
                             started_at=time.time() - 30)
    yield master, port
    board.close()


def test_extension_serves_the_master_state_and_restarts_on_the_same_port(fake_master,
                                                                          redis_url):
    master, port = fake_master
    with Producer(redis_url, prefix="t") as producer:
        producer.push_many("m.a", [1, 2, 3])
    ext = MetricsExtension(master)
    ext.start(master)
    try:
        got = wait_for(lambda: (s := scrape(port)).get(
            ("ssjobs_backlog", (("topic", "m.a"),))) == 3 and s, 5, what="redis refresh")
    finally:
        ext.stop(master)
    topic = (("topic", "m.a"),)
    assert got[("ssjobs_jobs_processed_total", topic)] == 0
    assert got[("ssjobs_redis_up", topic)] == 1
    assert got[("ssjobs_workers", (("kind", "static"), ("state", "idle"), ("topic", "m.a")))] == 1
    assert got[("ssjobs_workers", (("kind", "dynamic"), ("state", "busy"), ("topic", "m.a")))] == 0
    assert got[("ssjobs_job_duration_seconds_count", topic)] == 4
    assert got[("ssjobs_job_duration_seconds_bucket", (("le", "0.0008"), *topic))] == 3
    assert got[("ssjobs_job_duration_seconds_sum", topic)] == pytest.approx(0.01)
    assert got[("ssjobs_worker_restarts_total", (("reason", "crash"),))] == 2
    assert got[("ssjobs_worker_restarts_total", (("reason", "timeout"),))] == 0
    assert 29 < got[("ssjobs_master_uptime_seconds", ())] < 60
    with pytest.raises(OSError):
        scrape(port)                              # stopped: the port is closed

    again = MetricsExtension(master)              # as after a reload
    again.start(master)
    try:
        assert scrape(port)[("ssjobs_job_duration_seconds_count", topic)] == 4
    finally:
        again.stop(master)


def test_a_port_in_use_is_one_clear_error_and_nothing_is_left_running(fake_master, redis_url):
    master, port = fake_master
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        ext = MetricsExtension(master)
        with pytest.raises(ExtensionUnavailable, match=f"cannot listen on 127.0.0.1:{port}: "
                                                       "Address already in use"):
            ext.start(master)                     # the master logs it and runs without
    assert ext.server is None and ext.fds() == []
    assert not [t for t in threading.enumerate() if t.name.startswith("ssjobs-metrics")]


# -- a real master, scraped over HTTP --------------------------------------------------------

def test_metrics_of_a_real_master_match_status_json(project, redis_url):
    port = free_port()
    project.consumer("work", WORK)
    project.write_config([{"topic": "m.work", "consumer": "work:run", "static_workers": 2,
                           "max_retries": 0},
                          {"topic": "m.slow", "consumer": "work:run", "rate_limit": "1/m"}],
                         extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    master = MasterProc(project.config, project.data_dir)
    try:
        master.start()
        with Producer(redis_url, prefix="t") as producer:
            producer.push_many("m.work", list(range(40)) + ["fail"] * 2)
            producer.push_many("m.slow", [1, 2, 3])

        def status() -> dict:
            out = subprocess.run([sys.executable, "-m", "ssjobs", "status", "--json", "-c",
                                  str(project.config)], capture_output=True, text=True,
                                 timeout=30)
            return json.loads(out.stdout)

        wait_for(lambda: status()["topics"]["m.work"]["processed"] == 40, 15, what="40 jobs")
        topic = (("topic", "m.work"),)
        metrics = wait_for(lambda: (m := scrape(port)).get(
            ("ssjobs_jobs_processed_total", topic)) == 40 and m, 10, what="metrics caught up")
        st = status()
        counters = st["topics"]["m.work"]
        for name, metric in (("processed", "ssjobs_jobs_processed_total"),
                             ("failed", "ssjobs_jobs_failed_total"),
                             ("backlog", "ssjobs_backlog"), ("delayed", "ssjobs_delayed"),
                             ("inflight", "ssjobs_inflight"), ("dead", "ssjobs_dead_letters")):
            assert metrics[(metric, topic)] == counters[name], name
        assert counters["failed"] == 2 and metrics[("ssjobs_jobs_dead_total", topic)] == 2
        slow = (("topic", "m.slow"),)
        assert metrics[("ssjobs_throttled", topic)] == 0 and not counters["throttled"]
        assert wait_for(lambda: scrape(port).get(("ssjobs_throttled", slow)) == 1, 10,
                        what="m.slow throttled") and status()["topics"]["m.slow"]["throttled"]
        for kind in ("static", "dynamic"):
            assert sum(v for (name, labels), v in metrics.items()
                       if name == "ssjobs_workers" and ("kind", kind) in labels
                       and ("topic", "m.work") in labels) \
                == counters["workers"][kind]
        runs = sum(w["processed"] + w["failed"] for w in st["workers"] if w["topic"] == "m.work")
        assert metrics[("ssjobs_job_duration_seconds_count", topic)] == runs == 42
        assert counters["p50_ms"] is not None and counters["p95_ms"] >= counters["p50_ms"]
        uptime = metrics[("ssjobs_master_uptime_seconds", ())]
        assert abs(uptime - (time.time() - st["master"]["started_at"])) < 5
    finally:
        master.kill_all()


def test_metrics_survive_reloads_and_workers_keep_no_fd_of_the_master(project, redis_url):
    """Issue 13.1: workers inherited the listening socket, so every other reload lost it."""
    port = free_port()
    project.consumer("work", WORK)
    project.write_config([{"topic": "m.work", "consumer": "work:run", "static_workers": 2}],
                         extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    master = MasterProc(project.config, project.data_dir)
    try:
        master.start()
        for reload in range(1, 4):
            # when the master reloads (its metrics extension stops and listens again)
            before = {w["pid"] for w in master.workers()}
            master.signal(signal.SIGHUP)
            wait_for(lambda r=reload: project.log_text().count("reloaded config") >= r, 30,
                     what=f"reload {reload}")
            wait_for(lambda b=before: (ws := master.workers()) and len(ws) == 2 and all(
                w["pid"] not in b and w["state"] == "idle" for w in ws), 30,
                what="new workers")
            # then /metrics is still served ...
            assert ("ssjobs_master_uptime_seconds", ()) in scrape(port), reload
        assert " off: " not in project.log_text()
        # ... and no worker holds a socket or the lock of the master's
        ours = fd_targets(master.pid)
        shared = {t for fd, t in ours.items() if fd > 2 and t.startswith("socket:")}
        assert shared, ours  # the master has its listening socket and Redis connections
        for w in master.workers():
            theirs = fd_targets(w["pid"])
            assert not shared & set(theirs.values()), (w["pid"], ours, theirs)
            assert str(master.files.lock_path) not in theirs.values()
        # every fd the master opened is close-on-exec: a consumer's exec keeps none
        assert [fd for fd in ours if fd > 2 and not close_on_exec(master.pid, fd)] == []
    finally:
        master.kill_all()


def test_the_job_duration_histogram_counts_the_last_jobs_of_recycled_workers(project, redis_url):
    """Issue 13.10: a worker's final second of counts was lost when its slot was reused."""
    port = free_port()
    project.consumer("work", WORK)
    project.write_config([{"topic": "m.work", "consumer": "work:run", "static_workers": 2,
                           "max_consumer_count": 5}],
                         extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    master = MasterProc(project.config, project.data_dir)
    topic = (("topic", "m.work"),)
    try:
        master.start()
        with Producer(redis_url, prefix="t") as producer:
            producer.push_many("m.work", list(range(20)))
        wait_for(lambda: scrape(port).get(("ssjobs_jobs_processed_total", topic)) == 20, 30,
                 what="20 jobs processed")
        wait_for(lambda: project.log_text().count("exited: recycle-count") >= 4, 15,
                 what="four workers recycled")
        count = ("ssjobs_job_duration_seconds_count", topic)
        wait_for(lambda: scrape(port)[count] >= 20, 5, what="20 job durations")
        assert scrape(port)[count] == 20
    finally:
        master.kill_all()


def test_redis_down_marks_topics_down_and_logs_once(project, caplog):
    project.redis_url = f"redis://127.0.0.1:{free_port()}/0"   # nothing listens there
    project.write_config([{"topic": "m.a", "consumer": "x:y"}, {"topic": "m.b", "consumer": "x:y"}],
                         extra=f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')
    master = SimpleNamespace(cfg=load_config(project.config), topics={"m.a": None, "m.b": None},
                             workers={}, board=None, restarts={}, started_at=time.time())
    ext = MetricsExtension(master)
    with caplog.at_level(logging.WARNING, logger="ssjobs.metrics"):
        for _ in range(3):
            ext.refresh_redis()
    assert ext.redis_up == {"m.a": 0, "m.b": 0} and ext.redis_view == {}
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
