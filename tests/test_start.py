"""`ssjobs start` as a new user meets it (issue 13): Redis that refuses or is not there,
logs of a foreground run, systemd's notify protocol, the workers' working directory, and
settings that must fail before anything starts. Real CLI, real master, private Redis."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import wait_for
from redis_server import RedisServer, free_port
from test_cli import JOB, WORK, Cli

from ssjobs.runtime import pid_alive

CWD_CONSUMER = """
import os

def run(job):
    with open(job.payload["out"], "w") as f:
        f.write(os.getcwd())
"""


@pytest.fixture
def cli(project):
    project.consumer("work", WORK)
    project.write_config([JOB])
    runner = Cli(project)
    yield runner
    runner.kill_all()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test alone (its settings may be changed)."""
    workdir = tmp_path / "own-redis"
    workdir.mkdir()
    server = RedisServer(workdir)
    server.start()
    yield server
    server.stop()


def test_a_wrong_redis_password_fails_start_at_once(cli, own_redis):
    """It waited ~30 s, then said `started` with a worker stuck in `starting`."""
    client = own_redis.client()
    client.config_set("requirepass", "s3cret")
    cli.project.redis_url = f"redis://:wrong@127.0.0.1:{own_redis.port}/0"
    cli.project.write_config([JOB])
    for args in (["start"], ["start", "--foreground"]):
        started = time.monotonic()
        result = cli(*args, timeout=30)
        assert time.monotonic() - started < 10, args
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "authentication failed" in result.stderr and "not started" in result.stderr
        assert "wrong" not in result.stderr  # the password is never shown
        assert "Traceback" not in result.stderr
        assert not cli.files.is_locked()


def test_an_unreachable_redis_warns_at_once_starts_and_the_workers_wait_for_it(cli, tmp_path):
    port = free_port()
    cli.project.redis_url = f"redis://127.0.0.1:{port}/0"
    cli.project.write_config([JOB])
    started = time.monotonic()
    result = cli("start")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    assert "warning: redis redis://127.0.0.1" in result.stderr and "unreachable" in result.stderr
    assert "waiting for redis" in result.stdout
    code, st = cli.status()
    assert code == 0 and st["redis"] == "down"
    assert "redis: down" in cli("status").stdout
    # when Redis comes up, the workers get ready without anyone's help
    (tmp_path / "late-redis").mkdir()
    server = RedisServer(tmp_path / "late-redis")
    server.start(port)
    try:
        wait_for(lambda: (s := cli.status()[1])["redis"] == "up" and len(s["workers"]) == 2
                 and all(w["state"] == "idle" for w in s["workers"]), 30, what="workers idle")
        assert cli("stop").returncode == 0
    finally:
        server.stop()


def test_start_wait_gives_up_on_a_redis_that_stays_away(cli):
    cli.project.redis_url = f"redis://127.0.0.1:{free_port()}/0"
    cli.project.write_config([JOB])
    started = time.monotonic()
    result = cli("start", "--wait", "1")
    assert result.returncode == 1
    assert 1 <= time.monotonic() - started < 10
    assert "waiting up to 1s" in result.stderr
    assert "still unreachable after 1s: not started" in result.stderr
    assert not cli.files.is_locked()


def foreground(cli, env: dict | None = None, **kw) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "ssjobs", "start", "--foreground", "-c",
                             str(cli.project.config)], cwd=cli.project.root,
                            env={**os.environ, **(env or {})}, **kw)
    cli.seen.add(proc.pid)
    return proc


def test_foreground_without_log_dir_logs_to_stderr(cli):
    """`--foreground` wrote nothing to stdout/stderr: `docker logs`, journald were empty."""
    text = cli.project.config.read_text().replace('dir = "./data/logs"', 'dir = "-"')
    cli.project.config.write_text(text)
    daemon = cli("start")
    assert daemon.returncode == 2 and 'log.dir is unset or "-"' in daemon.stderr
    proc = foreground(cli, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            seen.append(line)
            if "worker started" in line:
                break
        assert any("INFO" in s and "master: master started" in s for s in seen), seen
        assert any("worker cli.work #" in s for s in seen), seen
        assert not (cli.project.log_dir / "ssjobs.log").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_systemd_notify_ready_watchdog_and_stopping(cli, tmp_path):
    """Type=notify: READY=1 once the workers are up, WATCHDOG=1 while it runs (WatchdogSec),
    STOPPING=1 at stop; children do not inherit NOTIFY_SOCKET."""
    cli.project.consumer("env", "import os\ndef run(job):\n    open(job.payload, 'w').write("
                                "os.environ.get('NOTIFY_SOCKET', '-'))\n")
    cli.project.write_config([JOB, {"topic": "cli.env", "consumer": "env:run"}])
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        proc = foreground(cli, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
        messages = [sock.recv(4096).decode()]
        assert messages[0].startswith("READY=1") and f"MAINPID={proc.pid}" in messages[0]
        st = cli.status()[1]
        assert len(st["workers"]) == 3 and all(w["state"] == "idle" for w in st["workers"])
        watchdog = [sock.recv(4096).decode() for _ in range(3)]
        assert watchdog == ["WATCHDOG=1"] * 3
        out = tmp_path / "env.txt"
        subprocess.run([sys.executable, "-m", "ssjobs", "push", "cli.env", json.dumps(str(out)),
                        "-c", str(cli.project.config)], check=True, capture_output=True)
        wait_for(out.exists, 10, what="the job")
        assert out.read_text() == "-"
        proc.send_signal(signal.SIGTERM)
        while (message := sock.recv(4096).decode()) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1"
        assert proc.wait(30) == 0


def test_workers_run_in_the_config_directory_or_process_workdir(cli, tmp_path):
    """They ran wherever `start` was typed (`/` after `cd / && ssjobs restart`)."""
    project = cli.project
    project.consumer("cwd", CWD_CONSUMER)
    project.write_config([{"topic": "cli.cwd", "consumer": "cwd:run"}])

    def cwd_of_a_job() -> str:
        out = tmp_path / f"cwd-{time.monotonic_ns()}.txt"
        pushed = cli("push", "cli.cwd", json.dumps({"out": str(out)}))
        assert pushed.returncode == 0, pushed.stderr
        wait_for(lambda: out.exists() and out.read_text(), 15, what="the job")
        return out.read_text()

    argv = [sys.executable, "-m", "ssjobs", "start", "-c", str(project.config)]
    assert subprocess.run(argv, cwd="/", capture_output=True, timeout=60).returncode == 0
    cli.remember()
    assert cwd_of_a_job() == str(project.root)
    assert cli("stop").returncode == 0
    (project.root / "run").mkdir()
    project.write_config([{"topic": "cli.cwd", "consumer": "cwd:run"}],
                         process='workdir = "run"')
    assert subprocess.run(argv, cwd="/", capture_output=True, timeout=60).returncode == 0
    cli.remember()
    assert cwd_of_a_job() == str(project.root / "run")
    project.write_config([{"topic": "cli.cwd", "consumer": "cwd:run"}],
                         process='workdir = "gone"')
    result = cli("reload")
    assert result.returncode == 1 and "process.workdir" in result.stderr
    assert cwd_of_a_job() == str(project.root / "run")


def test_a_notifier_without_its_url_fails_check_and_start(cli):
    """Issue 13.5: it passed `check` and `start`, then logged a traceback at run time."""
    cli.project.write_config([JOB], extra='[notifier]\nclass = "webhook"\n')
    for command in ("check", "start"):
        result = cli(command)
        assert result.returncode == 2, command
        assert 'notifier.params.url (line' in result.stderr
        assert 'required for class "webhook"' in result.stderr and "Traceback" not in result.stderr
    assert not cli.files.is_locked()
    assert not [p for p in cli.seen if pid_alive(p)]
