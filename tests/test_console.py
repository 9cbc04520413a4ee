"""The operator console, driven as an operator drives it: `ssjobs push`, `ssjobs dead ...`
and `ssjobs top` as subprocesses against one real master and a private Redis."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest
from conftest import Project, wait_for
from masters import MasterProc

from ssjobs.broker import Broker
from ssjobs.console import dead as dead_mod
from ssjobs.console.top import Frame, TopicRow, render, sparkline
from ssjobs.envelope import decode, encode

CONSUMERS = """
import json, os, time

SEEN = os.path.join(os.path.dirname(__file__), "seen.jsonl")

def record(job):
    with open(SEEN, "a") as f:
        f.write(json.dumps(job.payload) + "\\n")

def fail(job):
    raise ValueError(f"boom {job.payload}\\nsecond line")

def slow(job):
    time.sleep(0.05)
"""
JOBS = [{"topic": "con.work", "consumer": "c:record"},
        {"topic": "con.fail", "consumer": "c:fail", "max_retries": 0},
        {"topic": "con.slow", "consumer": "c:slow"}]
PREFIX = "t"   # Project.write_config's


class Console:
    """The project and its running master, and a way to run `ssjobs ...` against them."""

    def __init__(self, project: Project, master: MasterProc, client) -> None:
        self.project = project
        self.master = master
        self.redis = client

    def __call__(self, *args: str, stdin: str | None = None,
                 timeout: float = 30) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "ssjobs", *args, "-c", str(self.project.config)]
        return subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=timeout, cwd=self.project.root,
                              stdin=None if stdin is not None else subprocess.DEVNULL)

    def broker(self, topic: str) -> Broker:
        return Broker(self.redis, PREFIX, topic)

    def seen(self) -> list:
        path = self.project.consumers / "seen.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def processed(self, topic: str) -> int:
        return self.broker(topic).counts()["processed"]


@pytest.fixture(scope="module")
def console(redis_server, tmp_path_factory):
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start(redis_server.port)
    client = redis_server.client()
    client.flushall()
    project = Project(tmp_path_factory.mktemp("console"), redis_server.url)
    project.consumer("c", CONSUMERS)
    project.write_config(JOBS)
    master = MasterProc(project.config, project.data_dir)
    try:
        master.start()
        yield Console(project, master, client)
    finally:
        master.kill_all()
        client.close()


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssjobs: "), result.stderr
    return lines[0]


# -- push ------------------------------------------------------------------------------------

def test_push_from_argv_prints_the_id_and_the_job_runs(console):
    result = console("push", "con.work", '{"to": "a@example.com", "n": 1}')
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", job_id), result.stdout
    wait_for(lambda: {"to": "a@example.com", "n": 1} in console.seen(), 10, what="job run")


def test_push_from_stdin_one_job_per_line_with_count(console):
    before = console.processed("con.work")
    result = console("push", "con.work", "--count", stdin='"x1"\n\n[2, 3]\n{"k": null}\n')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pushed 3 jobs to 'con.work'"
    wait_for(lambda: console.processed("con.work") == before + 3, 10, what="3 jobs run")
    assert console.seen()[-3:] == ["x1", [2, 3], {"k": None}]


def test_push_bad_json_at_line_3_names_the_line_and_pushes_nothing(console):
    before = console.processed("con.work"), len(console.seen())
    error = one_error_line(console("push", "con.work", stdin='1\n{"ok": true}\n{oops\n4\n'))
    assert error.startswith("ssjobs: line 3: invalid JSON:"), error
    bad_arg = one_error_line(console("push", "con.work", "{nope"))
    assert "invalid JSON" in bad_arg
    time.sleep(0.3)   # had anything been pushed, the worker would have taken it by now
    assert (console.processed("con.work"), len(console.seen())) == before
    assert console.broker("con.work").counts()["backlog"] == 0


def test_push_to_a_topic_not_in_the_config_is_refused(console):
    error = one_error_line(console("push", "no.such.topic", "1"))
    assert "unknown topic 'no.such.topic'" in error and "con.work" in error
    assert console.redis.keys(f"{PREFIX}:{{no.such.topic}}:*") == []


def test_push_with_delay_goes_to_delayed(console):
    result = console("push", "con.slow", "7", "--delay", "3600", "--count")
    assert result.returncode == 0 and "due in 3600s" in result.stdout, result
    assert console.broker("con.slow").counts()["delayed"] == 1
    console.redis.delete(console.broker("con.slow").keys.delayed)


# -- dead ------------------------------------------------------------------------------------

def test_dead_list_show_retry_purge_round_trip(console):
    broker = console.broker("con.fail")
    assert console("push", "con.fail", "--count", stdin="1\n2\n3\n").returncode == 0
    wait_for(lambda: broker.counts()["dead"] == 3, 10, what="3 jobs dead-lettered")

    # list: newest first, with attempts, error type and first line, worker
    listed = console("dead", "list", "con.fail", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["message"] for r in rows] == ["boom 3", "boom 2", "boom 1"]
    assert {r["type"] for r in rows} == {"ValueError"} and {r["attempts"] for r in rows} == {1}
    assert all(r["worker"] and r["failed_at"] for r in rows)
    human = console("dead", "list", "con.fail", "--limit", "2")
    assert human.returncode == 0
    # ids of one producer share 22 leading digits: the list shows their distinct tails
    assert rows[0]["id"][-8:] in human.stdout and rows[0]["id"] not in human.stdout
    assert rows[2]["id"][-8:] not in human.stdout
    assert "ValueError: boom 3" in human.stdout and "2 newest of 3" in human.stdout
    assert "ids shortened" in human.stdout

    # show takes any unique part of an id (issue 13.10: it needed nearly the whole id)
    by_tail = console("dead", "show", "con.fail", rows[1]["id"][-8:])
    assert by_tail.returncode == 0 and f"id:          {rows[1]['id']}" in by_tail.stdout
    shared = rows[1]["id"][12:22]  # the producer's digits: all three jobs have them
    assert "matches more than one" in one_error_line(console("dead", "show", "con.fail", shared))

    # show: full traceback and payload; an unknown id is exit 1
    job_id = rows[1]["id"]
    shown = console("dead", "show", "con.fail", job_id)
    assert shown.returncode == 0, shown.stderr
    assert "Traceback (most recent call last)" in shown.stdout
    assert 'raise ValueError(f"boom' in shown.stdout and "second line" in shown.stdout
    assert re.search(r"^payload:\n2$", shown.stdout, re.M), shown.stdout
    assert "no dead job" in one_error_line(console("dead", "show", "con.fail", "f" * 32))

    # retry one: back in ready with attempts 0 and a history note; it fails again
    failed_before = broker.counts()["failed"]
    retried = console("dead", "retry", "con.fail", "--id", job_id)
    assert retried.returncode == 0 and "requeued 1 job" in retried.stdout, retried
    wait_for(lambda: broker.counts()["failed"] == failed_before + 1, 10, what="rerun")
    wait_for(lambda: broker.counts()["dead"] == 3, 10, what="dead again")
    again = decode(broker.dead_range(0, 0)[0])
    assert again.id == job_id and again.attempts == 1
    [note] = again.headers["history"]
    assert note["type"] == "ValueError" and note["message"] == "boom 2"
    assert note["attempts"] == 1 and note["at"] >= note["failed_at"]

    # an unknown --id requeues nothing
    assert "no dead job" in one_error_line(console("dead", "retry", "con.fail", "--id",
                                                   job_id, "--id", "0" * 32))
    assert broker.counts()["dead"] == 3

    # retry all, then purge: refused without a terminal unless --yes
    failed_before = broker.counts()["failed"]
    assert "requeued 3 jobs" in console("dead", "retry", "con.fail").stdout
    wait_for(lambda: broker.counts()["failed"] == failed_before + 3, 10, what="3 reruns")
    wait_for(lambda: broker.counts()["dead"] == 3, 10, what="3 dead again")
    assert "--yes" in one_error_line(console("dead", "purge", "con.fail"))
    assert broker.counts()["dead"] == 3
    purged = console("dead", "purge", "con.fail", "--yes")
    assert purged.returncode == 0 and "deleted 3 dead jobs" in purged.stdout, purged
    assert broker.counts()["dead"] == 0
    assert "no dead jobs" in console("dead", "list", "con.fail").stdout


def test_dead_retry_is_atomic_per_job(console):
    """Two retries of the same dead entry: exactly one requeues it."""
    broker = console.broker("con.spare")
    raw = encode("a" * 32, "con.spare", {"x": 1}, 2, time.time(),
                 {"error": {"reason": "failed", "type": "E", "message": "m", "traceback": "",
                            "failed_at": time.time(), "worker": "w"}})
    console.redis.lpush(broker.keys.dead, raw)
    entry = dead_mod.Entry(raw)
    new = dead_mod.retried_envelope(entry, time.time())
    assert [broker.dead_requeue(raw, new), broker.dead_requeue(raw, new)] == [True, False]
    assert console.redis.llen(broker.keys.ready) == 1
    job = decode(console.redis.lindex(broker.keys.ready, 0))
    assert job.attempts == 0 and "error" not in job.headers
    assert job.headers["history"][0]["attempts"] == 2
    console.redis.delete(broker.keys.ready)


def test_dead_purge_asks_on_a_terminal(console):
    broker = console.broker("con.fail")
    assert console("push", "con.fail", "9").returncode == 0
    wait_for(lambda: broker.counts()["dead"] == 1, 10, what="1 dead job")
    code, out = run_in_pty(["dead", "purge", "con.fail"], console, keys=[b"n\n"])
    assert code == 1 and "delete 1 dead job of 'con.fail'? [y/N]" in out, out
    assert broker.counts()["dead"] == 1
    code, out = run_in_pty(["dead", "purge", "con.fail"], console, keys=[b"y\n"])
    assert code == 0 and "deleted 1 dead job" in out, out
    assert broker.counts()["dead"] == 0


# -- top -------------------------------------------------------------------------------------

ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]")
HOME = b"\x1b[H"


def spawn_pty(args: list[str], console: Console, rows: int = 24,
              cols: int = 80, sigint=signal.SIG_DFL) -> tuple[int, int]:
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes `ssjobs ...` on the terminal
        try:
            signal.signal(signal.SIGINT, sigint)
            os.chdir(console.project.root)
            os.execv(sys.executable, [sys.executable, "-m", "ssjobs", *args, "-c",
                                      str(console.project.config)])
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    return pid, fd


def read_pty(fd: int, timeout: float) -> bytes:
    """What the terminal shows within ``timeout`` (b"" once the child is gone)."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:   # EIO: the child closed the terminal
        return b""


def wait_exit(pid: int, fd: int, timeout: float = 10) -> tuple[int, bytes]:
    out, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        out += read_pty(fd, 0.1)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            out += read_pty(fd, 0.1)
            return os.waitstatus_to_exitcode(status), out
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"still running after {timeout}s: {out[-2000:]!r}")


def run_in_pty(args: list[str], console: Console, keys: list[bytes]) -> tuple[int, str]:
    pid, fd = spawn_pty(args, console)
    try:
        out = b""
        for key in keys:
            out += read_pty(fd, 5)
            os.write(fd, key)
        code, rest = wait_exit(pid, fd)
        return code, ANSI.sub(b"", out + rest).decode(errors="replace")
    finally:
        os.close(fd)


def frames(stream: bytes) -> list[str]:
    """Complete screens drawn by rich's full-screen Live (each starts at cursor home)."""
    parts = stream.split(HOME)[1:-1]   # the last one may still be arriving
    texts = [ANSI.sub(b"", p).decode(errors="replace") for p in parts]
    return [t for t in texts if t.strip()]


def backlog_of(frame: str, topic: str) -> int | None:
    m = re.search(rf"^{re.escape(topic)}\s+(\d+)\s", frame, re.M)
    return int(m[1]) if m else None


def test_top_live_frames_change_and_q_quits_restoring_the_terminal(console):
    assert console("push", "con.slow", "--count", stdin="1\n" * 80).returncode == 0
    pid, fd = spawn_pty(["top"], console)
    try:
        attrs_before = termios.tcgetattr(fd)
        stream, seen, deadline = b"", [], time.time() + 15
        while time.time() < deadline and len(set(seen)) < 2:
            stream += read_pty(fd, 0.2)
            seen = [b for b in (backlog_of(f, "con.slow") for f in frames(stream))
                    if b is not None]
        screens = frames(stream)
        assert len(set(seen)) >= 2, (seen, screens[-1:] or stream[-2000:])
        last = screens[-1]
        for needle in ("con.work", "con.fail", "con.slow", "BACKLOG", "P95", "PID", "busy"):
            assert needle in last, (needle, last)
        assert all(len(line) <= 80 for line in last.splitlines()), last
        os.write(fd, b"q")
        code, _ = wait_exit(pid, fd)
        assert code == 0
        attrs_after = termios.tcgetattr(fd)
        assert attrs_after[3] & (termios.ICANON | termios.ECHO) == \
            attrs_before[3] & (termios.ICANON | termios.ECHO)
    finally:
        os.close(fd)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_top_ctrl_c_quits_cleanly_even_when_started_with_sigint_ignored(console):
    # A job started in the background of a non-interactive shell (a CI runner, nohup,
    # `cmd &` in a script) inherits SIGINT ignored; Python then installs no
    # KeyboardInterrupt handler, and a Ctrl-C on top's terminal used to be lost.
    pid, fd = spawn_pty(["top"], console, sigint=signal.SIG_IGN)
    try:
        stream = b""
        while not _keys_one_by_one(fd):  # top put the terminal in cbreak mode: it reads keys
            stream += read_pty(fd, 0.05)
            assert os.waitpid(pid, os.WNOHANG)[0] == 0, stream[-2000:]
        os.write(fd, b"\x03")   # Ctrl-C, as the terminal sends it
        code, _ = wait_exit(pid, fd)
        assert code == 0
    finally:
        os.close(fd)


def _keys_one_by_one(fd: int) -> bool:
    return not termios.tcgetattr(fd)[3] & termios.ICANON


def test_top_without_a_terminal_prints_one_plain_frame(console):
    """Issue 13.10: it printed `JOBS/S -` and `max 0.0/s` for a topic at work."""
    console("push", "con.slow", "--count", stdin="1\n" * 60)  # ~3 s of work for 1 worker
    wait_for(lambda: console.processed("con.slow") > 0, 10, what="con.slow at work")
    result = console("top", timeout=15)
    assert result.returncode == 0, result.stderr
    slow = result.stdout.split("con.slow", 1)[1].splitlines()
    rate = float(slow[0].split()[4])                       # JOBS/S, measured over a second
    assert rate > 0, result.stdout
    assert re.search(r"max (\d+\.\d)/s", slow[1]) and "max 0.0/s" not in slow[1], slow[1]
    assert "\x1b[" not in result.stdout
    for needle in ("master", "con.work", "con.fail", "con.slow", "PID", "static"):
        assert needle in result.stdout, needle
    assert len(console.master.workers()) == 3
    for w in console.master.workers():
        assert str(w["pid"]) in result.stdout


def test_top_layout_fits_80x24_with_many_topics_and_workers():
    now = time.time()
    rows = [TopicRow(f"topic.{i}", {"backlog": 10**i, "delayed": 0, "inflight": 1, "dead": i,
                                    "processed": 0}, rate=1.5, history=[1.0] * 60,
                     p50_ms=1.5, p95_ms=1500.0,
                     workers={"static": 2, "dynamic": 1, "busy": 2, "idle": 1})
            for i in range(8)]
    workers = [{"pid": 100 + i, "topic": "topic.1", "kind": "dynamic", "index": i,
                "state": "busy", "job_id": "0" * 32, "job_started_at": now - 5,
                "processed": i, "rss_bytes": 2**25} for i in range(40)]
    lines = render(Frame(now, {"pid": 1, "started_at": now - 60}, rows, workers, []), 80, 24)
    text = ["".join(t for t, _ in line) for line in lines]
    assert len(text) <= 24 and max(map(len, text)) <= 80
    assert any("more topics" in t for t in text) and any("more workers" in t for t in text)


def test_top_shows_throttled_topics_and_the_next_periodic_runs():
    now = time.time()
    counts = {"backlog": 5, "delayed": 0, "inflight": 0, "dead": 0, "processed": 0}
    rows = [TopicRow("slow.api", dict(counts, throttled=True), rate=0.0, history=[],
                     workers={"static": 1}),
            TopicRow("free", dict(counts), rate=0.0, history=[], workers={"static": 1})]
    note = "periodic free (*/5 * * * *): next 2026-12-03 11:25:00"
    lines = render(Frame(now, {"pid": 1, "started_at": now}, rows, [], [], [note]), 100, 24)
    text = ["".join(t for t, _ in line) for line in lines]
    assert note in text
    labels = [t for t in text if t.lstrip().startswith("workers")]
    assert len(labels) == 2 and "throttled" in labels[0] and "throttled" not in labels[1]


def test_sparkline_scales_to_the_peak_and_pads_missing_history():
    assert sparkline([0.0, 5.0, 10.0], width=3, span=3) == "▁▅█"
    assert sparkline([10.0], width=4, span=4) == "   █"
    assert sparkline([1.0] * 60, width=30) == "█" * 30
