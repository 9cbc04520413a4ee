"""The `ssjobs` command line, driven as a user drives it: `python -m ssjobs ...` subprocesses
against a private Redis, a temp config and a real master."""
from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import wait_for
from redis_server import free_port

from ssjobs.console.statusview import render_status
from ssjobs.producer import Producer
from ssjobs.rates import compute_rates
from ssjobs.runtime import RuntimeFiles, children, pid_alive
from ssjobs.scoreboard import Scoreboard
from ssjobs.status import collect_status

COMMANDS = ("help", "start", "stop", "restart", "revive", "reload", "status", "check")
WORK = """
def run(job):
    pass
"""
JOB = {"topic": "cli.work", "consumer": "work:run", "static_workers": 2}


class Cli:
    """Runs `ssjobs` for one project and remembers every master/worker pid it saw, so that
    a test failing midway leaves no process behind."""

    def __init__(self, project) -> None:
        self.project = project
        self.files = RuntimeFiles(project.data_dir)
        self.seen: set[int] = set()

    def __call__(self, *args: str, config: bool = True, timeout: float = 90,
                 env: dict | None = None) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "ssjobs", *args]
        if config:
            argv += ["-c", str(self.project.config)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                cwd=self.project.root, env={**os.environ, **(env or {})})
        self.remember()
        return result

    def status(self) -> tuple[int, dict]:
        result = self("status", "--json")
        assert result.returncode in (0, 3), result.stderr
        return result.returncode, json.loads(result.stdout)

    def remember(self) -> None:
        pid = self.files.read_pid()
        if pid and self.files.is_locked():
            self.seen.add(pid)
            self.seen.update(children_of(pid))
        try:
            board = Scoreboard.open(self.files.scoreboard_path)
        except (OSError, ValueError):
            return
        try:
            self.seen.update(w["pid"] for w in board.workers())
        finally:
            board.close()

    def kill_all(self) -> None:
        self.remember()
        for pid in sorted(self.seen):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def children_of(pid: int) -> list[int]:
    return [child for child, _ in children(pid)]


@pytest.fixture
def cli(project):
    project.consumer("work", WORK)
    project.write_config([JOB])
    runner = Cli(project)
    yield runner
    runner.kill_all()


@pytest.fixture
def running(cli):
    """A started daemon: (cli, master pid)."""
    result = cli("start")
    assert result.returncode == 0, result.stderr
    match = re.search(r"ssjobs started \(pid (\d+)\)", result.stdout)
    assert match, result.stdout
    return cli, int(match[1])


def assert_one_clear_line(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("ssjobs"), result.stderr


# -- help and version ------------------------------------------------------------------------

def test_no_args_and_help_list_every_command(cli):
    for args in ([], ["help"], ["--help"]):
        result = cli(*args, config=False)
        assert result.returncode == 0, result.stderr
        listed = re.findall(r"^  (\w+)\s+\S", result.stdout, re.M)
        assert set(COMMANDS) <= set(listed), result.stdout


def test_help_of_one_command(cli):
    result = cli("help", "stop", config=False)
    assert result.returncode == 0
    assert "--timeout" in result.stdout


def test_version_is_one_line_with_python_fastloop_and_redis_server(cli):
    import shutil

    result = cli("--version", config=False)
    assert result.returncode == 0
    assert re.fullmatch(r"ssjobs 0\.1\.0 \(Python \d+\.\d+\.\d+, fastloop: (compiled|pure), "
                        r"redis-server \d+\.\d+\.\d+ from (\S+)\)\n", result.stdout), result.stdout
    assert result.stdout.split(" from ")[1].rstrip(")\n") == shutil.which("redis-server")


def test_pure_python_twin_is_reported(cli):
    result = cli("--version", config=False, env={"SSJOBS_PURE_PYTHON": "1"})
    assert "fastloop: pure, redis-server" in result.stdout


def test_usage_mistakes_are_one_line_without_traceback(cli):
    for args in (["bogus"], ["status", "--bogus"], ["stop", "--timeout", "soon"]):
        result = cli(*args, config=False)
        assert result.returncode == 2
        assert_one_clear_line(result)


def test_missing_config_file_is_one_line(cli, tmp_path):
    """Issue 13.10: `status` exited 1 and `check` 2; a config error is 2 for every command."""
    for command in ("start", "stop", "status", "check", "reload", "revive", "restart", "top",
                    "push t {}", "dead list t"):
        result = cli(*command.split(), "-c", str(tmp_path / "nope.toml"), config=False)
        assert result.returncode == 2, command
        assert_one_clear_line(result)
        assert "nope.toml" in result.stderr and "not found" in result.stderr


def test_config_from_env_and_before_the_command(cli):
    given = cli("-c", str(cli.project.config), "status", config=False)
    from_env = cli("status", config=False, env={"SSJOBS_CONFIG": str(cli.project.config)})
    default = cli("status", config=False, env={"SSJOBS_CONFIG": ""})  # ./ssjobs.toml: none
    assert given.returncode == from_env.returncode == 3
    assert default.returncode == 2 and "ssjobs.toml" in default.stderr


# -- check -----------------------------------------------------------------------------------

def test_check_ok(cli):
    result = cli("check")
    assert result.returncode == 0, result.stderr
    assert "consumer ok: work:run" in result.stdout and "redis ok" in result.stdout


def test_check_invalid_config_reports_every_error_with_key_path(cli):
    cli.project.write_config([{**JOB, "static_workers": 0, "colour": "red"}])
    result = cli("check")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert re.search(r"jobs\[0\]\.static_workers \(line \d+\): must be between 1 and 1024",
                     result.stderr), result.stderr
    assert "jobs[0].colour" in result.stderr


@pytest.mark.parametrize("source, error", [
    ("1/0\n", "ZeroDivisionError"),
    ("import no_such_dependency\n", "no_such_dependency"),
    ("import os\nos._exit(7)\n", "exit status 7"),
])
def test_check_broken_consumer(cli, source, error):
    cli.project.consumer("broken", source)
    cli.project.write_config([JOB, {"topic": "cli.broken", "consumer": "broken:run"}])
    result = cli("check")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "broken:run" in result.stderr and error in result.stderr, result.stderr
    assert "cli.broken" in result.stderr
    assert "consumer ok: work:run" in result.stdout  # the others are still checked


def test_check_unreachable_redis(cli):
    project = cli.project
    project.redis_url = f"redis://127.0.0.1:{free_port()}/0"
    project.write_config([JOB])
    result = cli("check")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "redis" in result.stderr and "unreachable" in result.stderr, result.stderr


def test_check_says_a_consumer_takes_the_wrong_number_of_parameters(cli):
    """Issue 13.10: `check` passed it; then every job failed with a TypeError."""
    cli.project.consumer("arity", """
        def two(job, extra):
            pass
        class NoJob:
            def consume(self):
                pass
    """)
    cli.project.write_config([JOB, {"topic": "cli.two", "consumer": "arity:two"},
                              {"topic": "cli.nojob", "consumer": "arity:NoJob"}])
    result = cli("check")
    assert result.returncode == 2
    assert "consumer 'arity:two': two(job, extra) cannot be called with one argument, the job" \
        in result.stderr, result.stderr
    assert "consumer 'arity:NoJob': NoJob.consume() cannot be called with one argument" \
        in result.stderr, result.stderr


def test_check_warns_about_eviction_and_no_persistence(cli, rclient):
    """Issue 13.10: evicted queue keys are lost jobs; so is a restart without persistence."""
    result = cli("check")  # the tests' Redis runs without AOF and without RDB saves
    assert result.returncode == 0
    assert "persistence is off" in result.stderr and "appendonly yes" in result.stderr
    assert "maxmemory-policy" not in result.stderr
    rclient.config_set("maxmemory-policy", "allkeys-lru")
    try:
        result = cli("check")
    finally:
        rclient.config_set("maxmemory-policy", "noeviction")
    assert result.returncode == 0
    assert "maxmemory-policy is allkeys-lru" in result.stderr
    assert "set maxmemory-policy noeviction" in result.stderr


def test_check_lists_orphan_topics(cli, rclient):
    """Issue 13.4: jobs pushed to a typo of a topic waited forever, unseen."""
    with Producer(cli.project.redis_url, prefix="t") as producer:
        producer.push_many("cli.wrok", [1, 2, 3])          # a typo: no topic of the config
        producer.push("cli.work", 1)                       # a topic of the config
        producer.push("other.served", 1)                   # another host serves this one
    rclient.hset("t:{other.served}:workers", "host-b:1:2", "host-b:1")
    result = cli("check")
    assert result.returncode == 0, result.stderr
    assert "warning: orphan topic 'cli.wrok'" in result.stderr
    assert "3 jobs in t:{cli.wrok}:ready" in result.stderr
    assert "other.served" not in result.stderr and "'cli.work'" not in result.stderr


def test_check_notify_without_a_notifier_fails(cli):
    result = cli("check", "--notify")
    assert result.returncode == 1
    assert "[notifier]" in result.stderr


class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 - the stdlib's name
        length = int(self.headers.get("Content-Length", 0))
        _Hook.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_check_notify_sends_a_test_message_or_reports_the_error(cli):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        cli.project.write_config([JOB], extra=f'[notifier]\nclass = "webhook"\n'
                                              f'[notifier.params]\nurl = "{url}"\n')
        result = cli("check", "--notify")
        assert result.returncode == 0, result.stderr
        assert _Hook.bodies and "test" in _Hook.bodies[-1]["title"].lower()
    finally:
        server.shutdown()
        server.server_close()
    result = cli("check", "--notify")  # the server is gone now
    assert result.returncode == 1
    assert "test message failed" in result.stderr and "Traceback" not in result.stderr


# -- the lifecycle ---------------------------------------------------------------------------

def test_start_status_push_reload_stop(running, redis_url):
    cli, pid = running
    # status: running, the shape docs/reference.md gives
    code, st = cli.status()
    assert code == 0 and st["running"] is True
    assert st["master"]["pid"] == pid
    assert set(st["master"]) == {"pid", "started_at", "node", "version"}
    assert st["master"]["node"].endswith(f":{pid}")
    topic = st["topics"]["cli.work"]
    assert set(topic) >= {"backlog", "delayed", "inflight", "dead", "processed", "failed",
                          "rate_1m", "workers"}
    assert topic["workers"] == {"static": 2, "dynamic": 0}
    assert len(st["workers"]) == 2
    for w in st["workers"]:
        assert set(w) == {"pid", "topic", "kind", "state", "processed", "failed",
                          "started_at", "rss_bytes", "job_started_at"}
        assert w["topic"] == "cli.work" and w["kind"] == "static"
        assert w["state"] in ("starting", "idle", "busy", "stopping")
    human = cli("status")
    assert human.returncode == 0 and "cli.work" in human.stdout

    # jobs pushed by a producer are processed and counted
    with Producer(redis_url, prefix="t") as producer:
        producer.push_many("cli.work", list(range(30)))
    wait_for(lambda: cli.status()[1]["topics"]["cli.work"]["processed"] == 30, 20,
             what="30 jobs processed")

    # reload: accepted, same master, workers still serve
    result = cli("reload")
    assert result.returncode == 0, result.stderr
    with Producer(redis_url, prefix="t") as producer:
        producer.push_many("cli.work", list(range(10)))
    wait_for(lambda: cli.status()[1]["topics"]["cli.work"]["processed"] == 40, 30,
             what="10 more jobs after reload")
    assert cli.status()[1]["master"]["pid"] == pid
    wait_for(lambda: len(cli.status()[1]["workers"]) == 2, 30, what="2 workers after reload")

    # stop: gone, lock free, no process left
    seen = set(cli.seen)
    result = cli("stop")
    assert result.returncode == 0, result.stderr
    assert not pid_alive(pid)
    assert not cli.files.is_locked()
    assert [p for p in seen if pid_alive(p)] == []

    # status now: exit 3 with the last snapshot
    code, st = cli.status()
    assert code == 3 and st["running"] is False
    assert st["master"]["pid"] == pid
    assert st["topics"]["cli.work"]["processed"] == 40


def test_start_twice_names_the_running_pid(running):
    cli, pid = running
    result = cli("start")
    assert result.returncode == 1
    assert f"already running (pid {pid})" in result.stderr


def test_stop_when_not_running(cli):
    result = cli("stop")
    assert result.returncode == 0, result.stderr
    assert "not running" in result.stdout


def test_status_when_never_started_shows_the_configured_topics(cli):
    """Issue 13.10: it said `no topics` before the first start."""
    code, st = cli.status()
    assert code == 3
    assert st["running"] is False and st["workers"] == [] and st["redis"] == "up"
    assert st["topics"]["cli.work"]["backlog"] == 0
    assert st["topics"]["cli.work"]["workers"] == {"static": 0, "dynamic": 0}
    human = cli("status")
    assert human.returncode == 3 and "not running" in human.stdout
    assert "cli.work" in human.stdout and "no topics" not in human.stdout


def test_revive_starts_when_stopped_and_does_nothing_when_running(cli):
    result = cli("revive")
    assert result.returncode == 0, result.stderr
    code, st = cli.status()
    assert code == 0
    pid = st["master"]["pid"]
    result = cli("revive")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert cli.status()[1]["master"]["pid"] == pid


def test_restart_replaces_the_master(running):
    cli, pid = running
    result = cli("restart")
    assert result.returncode == 0, result.stderr
    code, st = cli.status()
    assert code == 0 and st["master"]["pid"] != pid
    assert not pid_alive(pid)


def test_restart_with_invalid_config_keeps_the_running_master(running):
    cli, pid = running
    cli.project.write_config([{**JOB, "max_retries": -1}])
    result = cli("restart")
    assert result.returncode == 2
    assert "jobs[0].max_retries" in result.stderr
    assert cli.status()[1]["master"]["pid"] == pid


def test_reload_with_invalid_config_is_refused(running):
    cli, pid = running
    cli.project.write_config([{**JOB, "static_workers": 5000}])
    result = cli("reload")
    assert result.returncode == 2
    assert "jobs[0].static_workers" in result.stderr and "Traceback" not in result.stderr
    code, st = cli.status()
    assert code == 0 and st["master"]["pid"] == pid
    assert st["topics"]["cli.work"]["workers"]["static"] == 2


def test_reload_when_not_running_fails(cli):
    result = cli("reload")
    assert result.returncode == 1
    assert result.stderr.startswith("ssjobs: not running\n")  # not "ssjobs: ssjobs is ..."


def test_reload_reports_success_and_waits_for_the_new_workers(running):
    cli, pid = running
    result = cli("reload")
    assert result.returncode == 0, result.stderr
    assert f"ssjobs reloaded (pid {pid}): 1 topic, replacing 2 workers one by one" \
        in result.stdout


def test_reload_with_broken_code_is_refused_for_that_topic_and_says_why(running):
    """Issue 13.2, through the CLI: exit 1 with the reason; the workers stay healthy."""
    cli, pid = running
    before = {w["pid"] for w in cli.status()[1]["workers"]}
    cli.project.consumer("work", "import no_such_module_anywhere\n" + WORK)
    result = cli("reload")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "reload refused for topic 'cli.work': the new worker cannot import its consumer" \
        in result.stderr and "no_such_module_anywhere" in result.stderr, result.stderr
    st = cli.status()[1]
    assert st["topics"]["cli.work"]["workers"] == {"static": 2, "dynamic": 0}
    assert {w["pid"] for w in st["workers"]} == before
    assert "ERROR" in cli.project.log_text()


def test_stop_and_status_need_only_data_dir(running):
    cli, pid = running
    cli.project.write_config([{**JOB, "consumer": "not a spec"}], extra="[nonsense]\nx = 1\n")
    assert cli("check").returncode == 2
    result = cli("status", "--json")
    assert result.returncode == 0
    st = json.loads(result.stdout)
    assert st["running"] is True and st["master"]["pid"] == pid and len(st["workers"]) == 2
    assert "warning" in result.stderr and "Traceback" not in result.stderr
    assert cli("revive").returncode == 0
    result = cli("stop")
    assert result.returncode == 0, result.stderr
    assert not pid_alive(pid)
    assert cli("status").returncode == 3


def test_foreground_start_exits_0_on_sigterm(cli, procs):
    proc = subprocess.Popen([sys.executable, "-m", "ssjobs", "start", "--foreground", "-c",
                             str(cli.project.config)], cwd=cli.project.root)
    procs.append(proc)
    wait_for(lambda: cli.status()[0] == 0 and len(cli.status()[1]["workers"]) == 2, 30,
             what="foreground master up")
    assert cli.status()[1]["master"]["pid"] == proc.pid
    workers = [w["pid"] for w in cli.status()[1]["workers"]]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not cli.files.is_locked()
    wait_for(lambda: not any(pid_alive(p) for p in workers), 10, what="workers gone")


def test_stop_timeout_sigkills_a_master_that_ignores_sigterm(cli):
    """A wedged master: stop --timeout escalates to SIGKILL and still returns 0."""
    code = ("import fcntl, os, signal, sys, time\n"
            "from ssjobs.runtime import RuntimeFiles\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "f = RuntimeFiles(sys.argv[1]); f.ensure_dir(); assert f.acquire_lock()\n"
            "f.write_pid(os.getpid()); print('ready', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(cli.project.data_dir)],
                            stdout=subprocess.PIPE, text=True)
    cli.seen.add(proc.pid)
    try:
        assert proc.stdout.readline().strip() == "ready"
        started = time.monotonic()
        result = cli("stop", "--timeout", "1")
        assert result.returncode == 0, result.stderr
        assert "SIGKILL" in result.stderr
        assert time.monotonic() - started < 15
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the status model, in process ------------------------------------------------------------

def test_collect_status_not_running_without_snapshot(tmp_path):
    st = collect_status(None, RuntimeFiles(tmp_path / "nothing"))
    assert st["running"] is False and st["master"] is None
    assert st["topics"] == {} and st["workers"] == []
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(render_status(st))
    assert "not running" in console.export_text()


def test_collect_status_with_redis_down_reports_it_and_keeps_going(project):
    from ssjobs.config import load_config

    project.redis_url = f"redis://127.0.0.1:{free_port()}/0"
    cfg = load_config(project.write_config([JOB, {"topic": "cli.other", "consumer": "w:x"}]))
    started = time.monotonic()
    st = collect_status(cfg, RuntimeFiles(project.data_dir), running_pid=os.getpid(),
                        redis_timeout=0.5)
    assert time.monotonic() - started < 5  # one failed Redis is asked once, not per topic
    assert st["running"] is True and st["master"]["pid"] == os.getpid()
    assert project.redis_url in st["redis_error"] and "refused" in st["redis_error"]
    for topic in ("cli.work", "cli.other"):
        assert st["topics"][topic]["redis_error"] == st["redis_error"]
        assert st["topics"][topic]["backlog"] is None
        assert st["topics"][topic]["workers"] == {"static": 0, "dynamic": 0}


def test_rate_1m_from_processed_counter_samples():
    now = 1000.0
    samples = [(now - 120, {"a": 0}), (now - 61, {"a": 60, "b": 5}), (now - 30, {"a": 90}),
               (now - 1, {"a": 119})]
    rates = compute_rates(samples, {"a": 121, "b": 5, "c": 7}, now)
    assert rates["a"] == pytest.approx(61 / 61, abs=0.01)  # sample nearest one minute ago
    assert rates["b"] == 0.0
    assert rates["c"] == 0.0  # no history yet
    assert compute_rates(samples, {"a": 3}, now)["a"] == 0.0  # counter reset (Redis flushed)


def test_render_status_shows_topics_workers_and_redis_errors():
    st = {"running": True,
          "master": {"pid": 1, "started_at": 0.0, "node": "h:1", "version": "0.1.0"},
          "topics": {"mail.send": {"backlog": 5, "delayed": 0, "inflight": 1, "dead": 2,
                                   "processed": 120, "failed": 3, "rate_1m": 2.0,
                                   "workers": {"static": 1, "dynamic": 0}},
                     "other": {"backlog": None, "delayed": None, "inflight": None,
                               "dead": None, "processed": None, "failed": None,
                               "rate_1m": None, "redis_error": "redis x: refused",
                               "workers": {"static": 0, "dynamic": 0}}},
          "workers": [{"pid": 42, "topic": "mail.send", "kind": "static", "state": "busy",
                       "processed": 60, "failed": 1, "started_at": 0.0,
                       "rss_bytes": 21_000_000, "job_started_at": 1.0}]}
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(render_status(st))
    text = console.export_text()
    for needle in ("mail.send", "120", "2.00", "1+0", "42", "busy", "20MB",
                   "redis x: refused", "h:1"):
        assert needle in text, needle
