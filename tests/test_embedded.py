"""`[redis] url = "embedded"`: the master runs its own redis-server (ssjobs/embedded.py,
docs/deploy.md). Real masters and real redis-servers in the test's own data_dir; no Redis is
given to any of them, and none of them touches another Redis."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import RECORD_IDS, Project, nobody_can_run_ssjobs, wait_for
from masters import MasterProc
from test_cli import Cli

from ssjobs.config import load_config
from ssjobs.embedded import ServerFiles, server_conf, serving
from ssjobs.producer import Producer
from ssjobs.runtime import pid_alive, proc_stat
from ssjobs.status import EMBEDDED_DOWN

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed")

SLOW = """
import os, time
def run(job):
    time.sleep(job.payload.get("sleep", 0) if isinstance(job.payload, dict) else 0)
    fd = os.open(os.environ["SSJOBS_TEST_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{job.id}\\n".encode())
    os.close(fd)

def fail(job):
    raise ValueError("no such recipient")
"""
JOBS = [{"topic": "e.work", "consumer": "slow:run", "static_workers": 2},
        {"topic": "e.fail", "consumer": "slow:fail", "max_retries": 0}]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project whose config says url = "embedded" and nothing else about Redis."""
    monkeypatch.setenv("SSJOBS_TEST_OUT", str(tmp_path / "out.txt"))
    p = Project(tmp_path, "embedded")
    p.consumer("slow", SLOW)
    p.consumer("rec", RECORD_IDS)
    yield p
    # whatever a failed test left: every redis-server working in this data_dir, by identity
    for pid in serving(ServerFiles(p.data_dir)):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cli(project):
    project.write_config(JOBS)
    runner = Cli(project)
    yield runner
    runner.kill_all()


@pytest.fixture
def masters(project):
    started: list[MasterProc] = []

    def make(jobs=JOBS, **kw) -> MasterProc:
        project.write_config(jobs, **kw)
        m = MasterProc(project.config, project.data_dir)
        started.append(m)
        return m

    yield make
    for m in started:
        m.kill_all()


def server(project) -> ServerFiles:
    return ServerFiles(project.data_dir)


def server_pid(project) -> int | None:
    try:
        return int(server(project).pid_path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def done_ids(project) -> list[str]:
    out = project.root / "out.txt"
    return out.read_text().split() if out.exists() else []


def started_pid(result) -> int:
    assert result.returncode == 0, result.stdout + result.stderr
    return int(re.search(r"ssjobs started \(pid (\d+)\)", result.stdout)[1])


# -- the whole life, from the command line -----------------------------------------------------

def test_start_push_status_stop_with_no_redis_given(cli, project):
    code, st = cli.status()  # before the first start: no server yet, and that is no outage
    assert code == 3 and st["topics"]["e.work"]["redis_error"] == EMBEDDED_DOWN
    check = cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert re.search(r"redis embedded: redis-server \d+\.\d+\.\d+, /\S+ \(PATH\); the master "
                     "runs it", check.stdout), check.stdout
    assert "not running now (it runs while the master does): not pinged" in check.stdout

    began = time.monotonic()
    master = started_pid(cli("start"))
    took = time.monotonic() - began
    redis_pid = server_pid(project)
    assert redis_pid and pid_alive(redis_pid)
    # the master's child, in a session of its own (a Ctrl-C for the master is not for it),
    # working in data_dir/redis/ (0700) with a socket only its user may use, and no port
    assert int(proc_stat(redis_pid)[1]) == master
    assert os.getsid(redis_pid) == redis_pid != os.getsid(master)
    files = server(project)
    assert stat.S_IMODE(files.dir.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(files.socket.stat().st_mode)
    assert stat.S_IMODE(files.socket.stat().st_mode) == 0o700
    assert stat.S_IMODE((files.dir / "appendonlydir").stat().st_mode) == 0o700  # umask 077
    assert not [line for line in open("/proc/net/tcp").read().splitlines()[1:]
                if _inode_of(line) in _socket_inodes(redis_pid)]

    pushed = cli("push", "e.work", '{"n": 1}')
    assert pushed.returncode == 0, pushed.stderr
    wait_for(lambda: done_ids(project) == [pushed.stdout.strip()], what="the job handled")
    code, st = cli.status()
    assert code == 0
    assert st["topics"]["e.work"]["processed"] == 1
    er = st["embedded_redis"]
    assert (er["running"], er["pid"], er["socket"]) == (True, redis_pid, str(files.socket))
    assert er["used_memory"] > 0 and er["rss_bytes"] > 0 and er["version"]
    text = cli("status").stdout
    assert f"redis: embedded redis-server {er['version']} (pid {redis_pid})" in text
    assert "redis ok: unix://" in cli("check").stdout

    stopped = cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not pid_alive(redis_pid) and not pid_alive(master)
    assert not files.socket.exists() and not files.pid_path.exists()
    assert serving(files) == []
    code, st = cli.status()
    assert code == 3 and st["embedded_redis"] == {"running": False,
                                                  "socket": str(files.socket)}
    print(f"start with an embedded redis-server took {took:.2f}s")


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def _inode_of(line: str) -> str:
    return line.split()[9]


def test_jobs_survive_a_stop_and_a_start(cli, project):
    """The append-only file: delayed, dead and processed counts come back after a stop."""
    started_pid(cli("start"))
    with Producer.from_config(project.config) as producer:
        later = producer.push_many("e.work", [{"n": n} for n in range(500)], delay=3600)
        poison = producer.push("e.fail", {"to": "nobody"})
    wait_for(lambda: cli.status()[1]["topics"]["e.fail"]["dead"] == 1, what="a dead letter")
    first = server_pid(project)
    assert cli("stop").returncode == 0
    assert not pid_alive(first)

    started_pid(cli("start"))
    assert server_pid(project) != first
    _, st = cli.status()
    assert st["topics"]["e.work"]["delayed"] == 500
    assert (st["topics"]["e.fail"]["dead"], st["topics"]["e.fail"]["failed"]) == (1, 1)
    listed = cli("dead", "list", "e.fail", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [d["id"] for d in json.loads(listed.stdout)] == [poison]
    with Producer.from_config(project.config) as producer:
        assert producer.queue_size("e.work") == 0  # delayed, not ready
    assert len(later) == 500


def test_producer_from_config_and_the_console_commands(cli, project):
    started_pid(cli("start"))
    with Producer.from_config(project.config) as producer:
        assert producer._default.client.connection_pool.connection_kwargs["path"] == \
            str(server(project).socket)
        ids = producer.push_many("e.work", [{"n": n} for n in range(20)])
        with pytest.raises(ValueError, match="unknown topic"):
            producer.push("e.typo", 1)
        poison = producer.push("e.fail", {"n": 1})
    wait_for(lambda: set(done_ids(project)) >= set(ids), what="20 jobs handled")
    wait_for(lambda: cli.status()[1]["topics"]["e.fail"]["dead"] == 1, what="a dead letter")
    shown = cli("dead", "show", "e.fail", poison[:8])
    assert shown.returncode == 0 and "no such recipient" in shown.stdout, shown.stderr
    retried = cli("dead", "retry", "e.fail")
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: cli.status()[1]["topics"]["e.fail"]["failed"] == 2, what="retried once")
    frame = cli("top")
    assert frame.returncode == 0, frame.stderr
    assert "e.work" in frame.stdout and "master not running" not in frame.stdout
    assert cli("stop").returncode == 0
    # with the master (and its server) gone, the commands say so, in one line
    for args in (["push", "e.work", "{}"], ["dead", "list", "e.fail"]):
        result = cli(*args)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and "the embedded redis-server" in result.stderr
        assert "it runs while the master does" in result.stderr


def test_the_dashboard_reads_the_embedded_server(cli, project, procs):
    pytest.importorskip("starlette", reason="the web extra is not installed")
    from webtools import http

    started_pid(cli("start"))
    with Producer.from_config(project.config) as producer:
        producer.push_many("e.work", [{"n": n} for n in range(5)], delay=3600)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ssjobs", "web", "-c", str(project.config),
                             "--listen", f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL)
    procs.append(proc)

    def overview():
        try:
            return http("GET", f"http://127.0.0.1:{port}/api/overview")
        except OSError:
            return None

    reply = wait_for(overview, 30, what="ssjobs web answering")
    assert reply.status == 200, reply
    assert reply.json()["topics"]["e.work"]["delayed"] == 5
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert cli("stop").returncode == 0


# -- failures: redis-server killed, master killed ----------------------------------------------

def test_sigkill_of_the_embedded_redis_server_under_load_loses_nothing(masters, project):
    """Pushes, fetches and settles run on while the server is SIGKILLed twice: the master
    restarts it, it reloads its append-only file, and every pushed job is handled."""
    total = 8000
    m = masters([{"topic": "e.rec", "consumer": "slow:run", "static_workers": 2,
                  "batch_size": 20}])
    m.start()
    pushed: list[str] = []

    def pusher() -> None:
        with Producer.from_config(project.config) as producer:
            while len(pushed) < total:
                try:
                    pushed.extend(producer.push_many(
                        "e.rec", [{"sleep": 0.001, "n": len(pushed) + i} for i in range(50)]))
                except Exception:  # noqa: BLE001 - the server is down: push again
                    time.sleep(0.05)
                time.sleep(0.005)

    thread = threading.Thread(target=pusher, daemon=True)
    thread.start()
    killed = []
    for share in (total // 4, total // 2):
        wait_for(lambda share=share: len(pushed) >= share, timeout=60, what="pushes")
        pid = wait_for(lambda: server_pid(project) not in (None, *killed) and
                       server_pid(project), what="a live server")
        assert len(done_ids(project)) < len(pushed)  # under load: a backlog, jobs in flight
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        wait_for(lambda: server_pid(project) not in (None, *killed), timeout=15,
                 what="the server restarted")
    thread.join(120)
    assert len(pushed) == total
    wait_for(lambda: set(done_ids(project)) >= set(pushed), timeout=120,
             what="every pushed job handled")
    log = project.log_text()
    assert log.count("embedded redis-server exited: killed by SIGKILL; restarting it") == 2
    assert json.loads(server(project).pid_path.read_text().split("\n", 1)[1])["restarts"] == 2
    with Producer.from_config(project.config) as producer:
        stats = producer._default.client.hgetall("t:{e.rec}:stats")
        assert producer.queue_size("e.rec") == 0
    assert int(stats.get(b"dead", 0)) == 0
    assert len({w["pid"] for w in m.workers()}) == 2
    assert m.proc.poll() is None
    assert m.stop() == 0
    assert not any(pid_alive(p) for p in killed) and serving(server(project)) == []


def test_sigkill_of_the_master_leaves_its_server_to_the_next_master(masters, project):
    m = masters([{"topic": "e.work", "consumer": "slow:run", "static_workers": 2}])
    m.start()
    with Producer.from_config(project.config) as producer:
        ids = producer.push_many("e.work", [{"sleep": 0.2, "n": n} for n in range(30)])
    wait_for(lambda: len(done_ids(project)) >= 4, what="a few jobs done")
    redis_pid = server_pid(project)
    m.proc.kill()
    m.proc.wait()
    # the workers finish their job and return the rest: through the server, still up
    wait_for(lambda: not [p for p in m.seen_pids if pid_alive(p)], timeout=20,
             what="the killed master's workers gone")
    assert pid_alive(redis_pid)

    nxt = MasterProc(project.config, project.data_dir)
    try:
        nxt.start()
        assert server_pid(project) == redis_pid  # the same server, used again
        assert "left running by the previous master: using it" in project.log_text()
        wait_for(lambda: set(done_ids(project)) >= set(ids), timeout=60, what="all 30 done")
        assert nxt.stop() == 0
        assert not pid_alive(redis_pid)
    finally:
        nxt.kill_all()


def test_a_leftover_server_with_other_settings_is_replaced(masters, project):
    m = masters([{"topic": "e.work", "consumer": "slow:run"}])
    m.start()
    with Producer.from_config(project.config) as producer:
        ids = producer.push_many("e.work", [1, 2, 3], delay=3600)
    first = server_pid(project)
    m.proc.kill()
    m.proc.wait()
    port = _free_port()
    m = masters([{"topic": "e.work", "consumer": "slow:run"}], extra=f"embedded_port = {port}")
    m.start()
    second = server_pid(project)
    assert second != first and not pid_alive(first)
    assert f"stopping the redis-server (pid {first}) the previous master left (its " \
           "settings changed)" in project.log_text()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:  # embedded_port
        conn.sendall(b"PING\r\n")
        assert conn.recv(16) == b"+PONG\r\n"
    with Producer.from_config(project.config) as producer:
        assert producer._default.client.zcard("t:{e.work}:delayed") == len(ids)
    assert m.stop() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stop_stops_a_server_that_a_killed_master_left(cli, project):
    master = started_pid(cli("start"))
    redis_pid = server_pid(project)
    os.kill(master, signal.SIGKILL)
    wait_for(lambda: not pid_alive(master), what="master gone")
    code, st = cli.status()
    assert code == 3 and st["embedded_redis"]["pid"] == redis_pid
    assert "no master runs (a killed one left it)" in cli("status").stdout
    result = cli("stop")
    assert result.returncode == 0, result.stderr
    assert f"stopped the embedded redis-server (pid {redis_pid}) a killed master had left" \
        in result.stdout
    assert not pid_alive(redis_pid) and not server(project).pid_path.exists()


def test_a_server_that_cannot_start_fails_the_start_with_its_reason(cli, project):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        project.write_config(JOBS, extra=f"embedded_port = {taken.getsockname()[1]}")
        result = cli("start")
    assert result.returncode == 1
    assert "the embedded redis-server exited at start (exit status 1)" in result.stderr
    assert "Address already in use" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (project.data_dir / "ssjobs.pid").exists()
    assert serving(server(project)) == []


def test_reload_refuses_to_change_the_embedded_server(cli, project):
    started_pid(cli("start"))
    project.write_config(JOBS, extra="embedded_port = 7399")
    result = cli("reload")
    assert result.returncode == 1
    assert 'redis "embedded" is started and stopped with the master' in result.stderr
    assert cli("stop").returncode == 0


# -- no redis-server on PATH (a pip install) ------------------------------------------------

def test_without_redis_server_on_path_start_and_check_say_how_to_install_it(cli, project,
                                                                            tmp_path):
    bare = tmp_path / "bin"  # a PATH with a python but no redis-server
    bare.mkdir()
    os.symlink(sys.executable, bare / "python3")
    env = {"PATH": str(bare)}
    for args, code in ((["start"], 1), (["start", "--foreground"], 1), (["check"], 2)):
        result = cli(*args, env=env)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert lines == ['ssjobs: redis.url = "embedded" needs redis-server, and there is '
                         "none on PATH: install it with `apt-get install -y redis-server` (or "
                         "use the one-file ssjobs binary, which carries one)"], result.stderr
    assert not (project.data_dir / "ssjobs.pid").exists()
    version = cli("--version", config=False, env=env)
    assert version.stdout.rstrip().endswith(", redis-server: none on PATH)")


# -- the service user ------------------------------------------------------------------------

@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
@pytest.mark.skipif(not nobody_can_run_ssjobs(),
                    reason="user nobody cannot run this Python (see .ci/run)")
def test_the_embedded_server_runs_as_the_service_user(monkeypatch):
    import pwd
    import tempfile

    nobody = pwd.getpwnam("nobody")
    root = Path(tempfile.mkdtemp(prefix="ssjobs-emb-"))  # outside root's 0700 pytest dir
    try:
        root.chmod(0o755)
        out = root / "out.txt"
        out.touch()
        out.chmod(0o666)
        monkeypatch.setenv("SSJOBS_TEST_OUT", str(out))
        project = Project(root, "embedded")
        project.consumer("rec", RECORD_IDS)
        # a first run as root left root's files in data_dir/redis/
        project.write_config([{"topic": "e.rec", "consumer": "rec:run"}])
        m = MasterProc(project.config, project.data_dir)
        try:
            m.start()
            assert m.stop() == 0
            assert (project.data_dir / "redis" / "appendonlydir").stat().st_uid == 0
            project.write_config([{"topic": "e.rec", "consumer": "rec:run"}],
                                 process='user = "nobody"')
            m = MasterProc(project.config, project.data_dir)
            m.start()
            redis_pid = server_pid(project)
            with open(f"/proc/{redis_pid}/status") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
            assert uids == [str(nobody.pw_uid)] * 4
            for path in (project.data_dir / "redis",
                         *(project.data_dir / "redis").rglob("*")):
                assert path.lstat().st_uid == nobody.pw_uid, path
            with Producer.from_config(project.config) as producer:  # root may use the socket
                ids = producer.push_many("e.rec", [1, 2, 3])
            wait_for(lambda: set(out.read_text().split()) >= set(ids), what="jobs as nobody")
            assert m.stop() == 0
            assert not pid_alive(redis_pid)
            # and the StrictModes check accepts what the service user's server left
            restarted = MasterProc(project.config, project.data_dir)
            try:
                restarted.start()
                assert restarted.stop() == 0
            finally:
                restarted.kill_all()
        finally:
            m.kill_all()
            for pid in serving(ServerFiles(project.data_dir)):
                os.kill(pid, signal.SIGKILL)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the settings, unit by unit -----------------------------------------------------------------

def test_the_server_settings(tmp_path):
    files = ServerFiles(tmp_path / 'da"ta')
    conf = server_conf(files, 0, tmp_path / "logs" / "ssjobs-redis.log")
    lines = conf.splitlines()
    for wanted in ("port 0", "appendonly yes", "appendfsync everysec", 'save ""',
                   "maxmemory-policy noeviction", "unixsocketperm 700", "daemonize no",
                   f'unixsocket "{tmp_path}/da\\"ta/redis/redis.sock"',
                   f'dir "{tmp_path}/da\\"ta/redis"'):
        assert wanted in lines, wanted
    assert not [line for line in lines if line.startswith("bind")]
    with_port = server_conf(files, 7001, None).splitlines()
    assert "port 7001" in with_port and "bind 127.0.0.1 -::1" in with_port
    assert 'logfile ""' in with_port


def test_the_example_config_runs_an_embedded_server():
    cfg = load_config(Path(__file__).resolve().parent.parent / "config_example.toml")
    assert cfg.embedded_redis is cfg.redis and cfg.redis.url.startswith("unix://")
    assert cfg.redis.url.endswith("/data/process/redis/redis.sock")
    assert subprocess.run([sys.executable, "-m", "ssjobs.configdoc", "example"],
                          capture_output=True, text=True).stdout.count('url = "embedded"') == 1


def test_a_redis_server_in_the_current_directory_is_never_run(tmp_path):
    """PATH entries that are not absolute ("" or ".") are skipped: `ssjobs --version` run by
    root in someone else's directory must not run their redis-server."""
    planted = tmp_path / "redis-server"
    planted.write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\necho 'Redis server v=9.9.9'\n")
    planted.chmod(0o755)
    bare = tmp_path / "bin"
    bare.mkdir()
    result = subprocess.run([sys.executable, "-m", "ssjobs", "--version"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PATH": f".::{bare}"})
    assert result.stdout.rstrip().endswith("redis-server: none on PATH)"), result.stdout
    assert not (tmp_path / "ran").exists()
