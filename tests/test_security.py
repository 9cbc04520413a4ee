"""Local security (docs/security.md): each hole tried as an attacker on the host would try
it, against a real master, as root and as user ``nobody``; each attack must fail harmlessly.

Anything ``nobody`` must reach lives in a ``tempfile.mkdtemp`` dir (pytest's own tmp dirs
are root's 0700). The targets an attack aims at are root-only files in ``tmp_path``.
"""
from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import RECORD_IDS, Project, nobody_can_run_ssjobs, wait_for
from masters import MasterProc
from redis_server import free_port

from ssjobs.producer import Producer
from ssjobs.runtime import pid_alive, write_atomic

ROOT_ONLY = pytest.mark.skipif(os.getuid() != 0, reason="needs root")
AS_NOBODY = pytest.mark.skipif(not nobody_can_run_ssjobs(),
                               reason="needs root and a Python that user nobody can run")
SECRET = b"root only: do not touch\n"
CONSOLE_SCRIPT = Path(sys.executable).parent / "ssjobs"


def as_nobody(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           *argv], capture_output=True, text=True, timeout=60, **kw)


def ssjobs(*args: str, cwd: Path, env: dict | None = None, console_script: bool = False,
           timeout: float = 90) -> subprocess.CompletedProcess:
    argv = [str(CONSOLE_SCRIPT)] if console_script else [sys.executable, "-m", "ssjobs"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, **(env or {})})


def root_secret(where: Path, name: str) -> Path:
    path = where / name
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


def untouched(path: Path) -> bool:
    st = os.stat(path)
    return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), path.read_bytes()) == \
        (0, 0, 0o600, SECRET)


def one_clear_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("ssjobs"), result.stderr
    return lines[0]


@pytest.fixture
def shared_root():
    """A 0755 dir outside root's pytest tmp dir, removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="ssjobs-sec-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


class Daemons:
    """Masters a test started with `ssjobs start`; stopped, then killed by pid, at the end."""

    def __init__(self) -> None:
        self.started: list[tuple[Project, int]] = []

    def started_ok(self, project: Project, result: subprocess.CompletedProcess) -> int:
        assert result.returncode == 0, result.stdout + result.stderr
        pid = int(re.search(r"ssjobs started \(pid (\d+)\)", result.stdout)[1])
        self.started.append((project, pid))
        return pid

    def stop(self, project: Project) -> None:
        done = ssjobs("stop", "-c", str(project.config), cwd=project.root)
        assert done.returncode == 0, done.stdout + done.stderr

    def kill_all(self) -> None:
        for project, pid in self.started:
            if pid_alive(pid):
                ssjobs("stop", "--timeout", "5", "-c", str(project.config), cwd=project.root)
            if pid_alive(pid):
                os.kill(pid, 9)


@pytest.fixture
def daemons():
    made = Daemons()
    yield made
    made.kill_all()


# -- 1. nothing is imported from the cwd or the caller's PYTHONPATH -------------------------

PLANTED = ("setproctitle", "click", "msgpack", "redis", "prometheus_client", "rich")


def plant_modules(where: Path, markers: Path) -> None:
    for name in PLANTED:
        (where / f"{name}.py").write_text(
            f"open({str(markers / (where.name + '-' + name))!r}, 'w').close()\n")


@ROOT_ONLY
@pytest.mark.parametrize("console_script", [True, False], ids=["console-script", "python-m"])
def test_modules_planted_in_the_cwd_and_pythonpath_are_never_imported_by_a_root_master(
        project, tmp_path, daemons, monkeypatch, console_script):
    # given modules ssjobs imports, planted in the cwd of the operator and in a PYTHONPATH
    out = tmp_path / "out.txt"
    monkeypatch.setenv("SSJOBS_TEST_OUT", str(out))
    markers, cwd, pythonpath = tmp_path / "markers", tmp_path / "cwd", tmp_path / "pythonpath"
    for d in (markers, cwd, pythonpath):
        d.mkdir()
    plant_modules(cwd, markers)
    plant_modules(pythonpath, markers)
    project.consumer("rec", RECORD_IDS)
    project.write_config([{"topic": "q", "consumer": "rec:run"}], extra=textwrap.dedent(f"""
        [metrics]
        listen = "127.0.0.1:{free_port()}"
        """))
    env = {"PYTHONPATH": str(pythonpath)}
    # when root starts the master from there, and it runs a job and stops
    started = ssjobs("start", "-c", str(project.config), cwd=cwd, env=env,
                     console_script=console_script)
    pid = daemons.started_ok(project, started)
    with Producer(project.redis_url, prefix="t") as p:
        job_id = p.push("q", {"n": 1})
    wait_for(lambda: out.exists() and job_id in out.read_text(), what="the job")
    title = Path(f"/proc/{pid}/cmdline").read_bytes()
    status = ssjobs("status", "-c", str(project.config), cwd=cwd, env=env,
                    console_script=console_script)
    daemons.stop(project)
    # then no planted module was imported, by the command or by the daemon
    assert sorted(os.listdir(markers)) == []
    assert title.startswith(b"ssjobs: master"), title  # the real setproctitle did it
    assert status.returncode == 0, status.stderr


# -- 2. links planted in data_dir and log.dir are never followed ----------------------------

def user_project(root: Path, redis_url: str, **kw) -> Project:
    project = Project(root, redis_url)
    project.consumer("rec", RECORD_IDS)
    project.write_config([{"topic": "q", "consumer": "rec:run"}], process='user = "nobody"',
                         **kw)
    return project


@AS_NOBODY
def test_links_planted_by_the_service_user_leave_their_targets_untouched(
        redis_url, tmp_path, shared_root, daemons):
    # given a master that ran once as nobody, so nobody owns data_dir and log.dir
    project = user_project(shared_root, redis_url)
    daemons.started_ok(project, ssjobs("start", "-c", str(project.config), cwd=shared_root))
    daemons.stop(project)
    nobody = pwd.getpwnam("nobody").pw_uid
    assert project.data_dir.stat().st_uid == project.log_dir.stat().st_uid == nobody
    assert stat.S_IMODE((project.log_dir / "ssjobs.log").stat().st_mode) == 0o640
    # when nobody replaces the files a root master opens by links to root-only files
    links = {project.log_dir / "ssjobs.log": root_secret(tmp_path, "log-target"),
             project.log_dir / "ssjobs.stderr": root_secret(tmp_path, "stderr-target"),
             project.data_dir / "status.json": root_secret(tmp_path, "snapshot-target"),
             project.data_dir / "ssjobs.lock": root_secret(tmp_path, "lock-target"),
             project.data_dir / "ssjobs.pid": root_secret(tmp_path, "pid-target")}
    for link, target in links.items():
        planted = as_nobody("ln", "-sfn", str(target), str(link))
        assert planted.returncode == 0 and link.is_symlink(), planted.stderr
    # then `start` (daemon or foreground) refuses with one clear line naming a link
    for args in (["start"], ["start", "--foreground"]):
        refused = ssjobs(*args, "-c", str(project.config), cwd=shared_root)
        assert refused.returncode == 1
        assert "is a symbolic link" in one_clear_line(refused)
    # and a master started without the console's check gives up without following them
    m = MasterProc(project.config, project.data_dir)
    try:
        ok, message = m.start(expect_ok=False)
        assert not ok
        assert m.proc.wait(30) != 0
    finally:
        m.kill_all()
    # and not one target changed owner, mode or content
    assert all(untouched(target) for target in links.values())
    assert all(link.is_symlink() for link in links)
    # once nobody's links are gone, the master starts again and still leaves them alone
    for link in links:
        link.unlink()
    daemons.started_ok(project, ssjobs("start", "-c", str(project.config), cwd=shared_root))
    daemons.stop(project)
    assert all(untouched(target) for target in links.values())


@ROOT_ONLY
@pytest.mark.parametrize("spoil, says", [
    (lambda p: p.data_dir.chmod(0o770), "is writable by its group"),
    (lambda p: p.log_dir.chmod(0o757), "is writable by others"),
    (lambda p: os.chown(p.data_dir / "ssjobs.lock", 12345, 12345), "is owned by uid 12345"),
    (lambda p: os.link(p.data_dir / "ssjobs.lock", p.data_dir / "second-name"),
     "other hard link"),
    (lambda p: p.root.joinpath("data").chmod(0o777), "its parent"),
])
def test_a_data_dir_or_log_dir_another_user_could_change_is_refused(project, daemons, spoil,
                                                                    says):
    # given a project that started once (its dirs and files exist)
    project.consumer("rec", RECORD_IDS)
    project.write_config([{"topic": "q", "consumer": "rec:run"}])
    daemons.started_ok(project, ssjobs("start", "-c", str(project.config), cwd=project.root))
    daemons.stop(project)
    # when another user could now change one of them
    spoil(project)
    # then start refuses with one clear line saying why, and nothing runs
    refused = ssjobs("start", "-c", str(project.config), cwd=project.root)
    assert refused.returncode == 1
    assert says in one_clear_line(refused)
    assert not (project.data_dir / "ssjobs.pid").exists()


@AS_NOBODY
def test_a_shared_log_dir_and_the_files_of_others_in_it_are_never_handed_over(
        redis_url, shared_root, daemons):
    # given a log.dir shared with other programs' files, as /var/log is
    shared = shared_root / "var-log"
    shared.mkdir(mode=0o755)
    others = {shared / "syslog": (0, 0o640), shared / "app.log": (12345, 0o644)}
    for path, (uid, mode) in others.items():
        path.write_text("not ssjobs'\n")
        path.chmod(mode)
        os.chown(path, uid, uid)
    project = user_project(shared_root, redis_url)
    project.config.write_text(project.config.read_text().replace(
        'dir = "./data/logs"', f'dir = "{shared}"'))
    # when root starts a master that is to run as nobody
    refused = ssjobs("start", "-c", str(project.config), cwd=shared_root)
    # then it refuses: nobody could not write there, and the dir is not ssjobs' to give
    assert refused.returncode == 1
    assert "use a directory for ssjobs alone" in one_clear_line(refused)
    assert shared.stat().st_uid == 0
    # and when the dir is one nobody may write, the master runs and only its own files
    # change hands
    os.chown(shared, pwd.getpwnam("nobody").pw_uid, 0)
    daemons.started_ok(project, ssjobs("start", "-c", str(project.config), cwd=shared_root))
    daemons.stop(project)
    for path, (uid, mode) in others.items():
        st = path.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, mode), path
    assert (shared / "ssjobs.log").stat().st_uid == pwd.getpwnam("nobody").pw_uid


def test_write_atomic_replaces_a_planted_link_never_its_target(tmp_path):
    # given links at the temp name an earlier ssjobs used and at the path itself
    target = tmp_path / "target"
    target.write_bytes(b"keep\n")
    path = tmp_path / "status.json"
    os.symlink(target, tmp_path / f".status.json.{os.getpid()}.tmp")
    os.symlink(target, path)
    # when a file is written there
    write_atomic(path, b"new\n")
    # then the link at the path was replaced and the target kept its content
    assert not path.is_symlink() and path.read_bytes() == b"new\n"
    assert target.read_bytes() == b"keep\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- 3. the relay: a squatter as nobody hears nothing ---------------------------------------

SQUATTER = r'''
import json, os, socket, sys, time
out, master_pid, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with open(f"/proc/{master_pid}/stat", "rb") as f:
    start_time = f.read().rsplit(b")", 1)[1].split()[19]
name = b"\0ssjobs-notify/%d/%s" % (master_pid, start_time)  # the relay's old address
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
got, bound, deadline = [], False, time.monotonic() + seconds
while time.monotonic() < deadline and not os.path.exists(out + ".stop"):
    if not bound:
        try:
            sock.bind(name)
            sock.settimeout(0.1)
            bound = True
            open(out + ".bound", "w").close()
        except OSError:
            time.sleep(0.001)  # a master holds it: try again the moment it lets go
            continue
    try:
        got.append(sock.recv(65536).decode(errors="replace"))
    except OSError:
        pass
# and forge an ERROR line to every ssjobs socket this user can find
forged = 0
with open("/proc/net/unix") as f:
    names = [line.split()[-1] for line in f if "ssjobs" in line]
for n in names:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(b'{"msg": "FORGED by nobody", "level": "ERROR"}',
                 b"\0" + n[1:].encode() if n.startswith("@") else n.encode())
        forged += 1
    except OSError:
        pass
with open(out, "w") as f:
    json.dump({"bound": bound, "got": got, "forged_to": forged}, f)
'''


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # the masters post to 127.0.0.1 directly


@AS_NOBODY
def test_a_squatter_as_nobody_never_receives_a_failing_jobs_error(project, shared_root):
    from test_alerts import Hook, notifier_toml

    hook = Hook()
    project.consumer("c", """
        def leak(job):
            raise RuntimeError(f"card {job.payload['card']} was declined")
    """)
    jobs = [{"topic": "pay", "consumer": "c:leak", "max_retries": 0, "static_workers": 2}]
    project.write_config(jobs)
    m = MasterProc(project.config, project.data_dir)
    squatter = None
    try:
        m.start()
        # given a squatter running as nobody that takes the relay's address first
        script, out = shared_root / "squat.py", shared_root / "out"
        script.write_text(SQUATTER)
        out.mkdir(mode=0o777)
        out.chmod(0o777)
        squatter = subprocess.Popen(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             sys.executable, "-I", str(script), str(out / "got.json"), str(m.pid), "60"])
        wait_for(lambda: (out / "got.json.bound").exists(), what="the squatter bound")
        # when a reload turns the notifier on and a job fails with a secret in its error
        old = {w["pid"] for w in m.workers()}
        project.write_config(jobs, extra=notifier_toml(hook.url))
        m.signal(signal.SIGHUP)
        wait_for(lambda: "notifier webhook:" in project.log_text(), what="reload")
        wait_for(lambda: (ws := m.workers()) and len(ws) == 2 and all(
            w["pid"] not in old and w["state"] == "idle" for w in ws), timeout=20,
            what="the new workers")
        with Producer(project.redis_url, prefix="t") as p:
            p.push("pay", {"card": "4111-SECRET-1111"})
        # then the master still logs the error and relays it to the notifier
        wait_for(lambda: [b for b in hook.bodies if "4111-SECRET-1111" in b["text"]],
                 timeout=20, what="the error line at the notifier")
        assert "4111-SECRET-1111" in project.log_text()
        time.sleep(0.5)  # a datagram sent to the squatter would be there by now
        (out / "got.json.stop").touch()
        assert squatter.wait(30) == 0
        heard = json.loads((out / "got.json").read_text())
        # and the squatter heard nothing, and its forged line was not relayed
        assert heard["got"] == []
        assert not any("4111-SECRET-1111" in g for g in heard["got"])
        time.sleep(0.5)
        assert not [b for b in hook.bodies if "FORGED" in b["text"]]
        assert "Address already in use" not in project.log_text()
        assert m.stop() == 0
    finally:
        if squatter is not None and squatter.poll() is None:
            squatter.kill()
            squatter.wait(10)
        m.kill_all()
        hook.stop()


# -- 4. secrets never printed ---------------------------------------------------------------

REDIS_PASSWORD = "r3dis-SECRET-pw"
METRICS_TOKEN = "m3trics-SECRET-token"
HOOK_TOKEN = "h00k-SECRET-path"


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory):
    from redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("locked-redis"), password=REDIS_PASSWORD)
    server.start()
    yield server
    server.stop()


def test_passwords_and_tokens_appear_in_no_output_log_or_scrape(tmp_path, locked_redis,
                                                                monkeypatch):
    from test_alerts import Hook

    # given a config whose Redis URL carries the password in its query, a metrics token and
    # a webhook whose path is its token, and a consumer whose error quotes the URL
    hook = Hook()
    url = f"redis://127.0.0.1:{locked_redis.port}/0?password={REDIS_PASSWORD}"
    monkeypatch.setenv("LEAKY_URL", url)
    project = Project(tmp_path, url)
    project.consumer("c", """
        import os
        def leak(job):
            raise RuntimeError(f"cannot reach {os.environ['LEAKY_URL']}")
    """)
    port = free_port()
    project.write_config([{"topic": "q", "consumer": "c:leak", "max_retries": 0}],
                         extra=textwrap.dedent(f"""
        [metrics]
        listen = "127.0.0.1:{port}"
        token = "{METRICS_TOKEN}"

        [notifier]
        class = "webhook"
        [notifier.params]
        url = "{hook.url}/{HOOK_TOKEN}"
        """))
    cfg = str(project.config)
    seen: list[str] = []

    def run(*args: str) -> subprocess.CompletedProcess:
        done = ssjobs(*args, "-c", cfg, cwd=tmp_path)
        seen.append(done.stdout + done.stderr)
        return done

    try:
        assert run("check").returncode == 0, seen[-1]
        assert run("start").returncode == 0, seen[-1]
        with Producer(url, prefix="t") as p:
            job_id = p.push("q", 1)
        wait_for(lambda: [b for b in hook.bodies if job_id in b["text"]], timeout=20,
                 what="the failure at the notifier")
        wait_for(lambda: run("status", "--json").returncode == 0 and
                 json.loads(seen[-1])["topics"]["q"]["dead"] == 1, what="the dead job")
        run("status")
        run("top")
        run("dead", "show", "q", job_id)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                         headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            seen.append(resp.read().decode())
        # and the same with Redis down: the errors name the server
        locked_redis.stop()
        run("status", "--json")
        run("check")
        run("stop")
    finally:
        if locked_redis.proc is None:
            locked_redis.start(locked_redis.port)
        ssjobs("stop", "--timeout", "5", "-c", cfg, cwd=tmp_path)
        hook.stop()
    seen.append(project.log_text())
    seen.append((project.data_dir / "status.json").read_text())
    seen += [json.dumps(b) for b in hook.bodies]
    # then no password or token appears anywhere, though the failures were shown
    everything = "\n".join(seen)
    for secret in (REDIS_PASSWORD, METRICS_TOKEN, HOOK_TOKEN):
        assert secret not in everything, secret
    assert "password=***" in everything and "cannot reach" in everything
    assert "ssjobs_backlog" in everything


# -- 5. check imports consumers as process.user; the metrics endpoint is bounded -----------

@AS_NOBODY
def test_check_as_root_imports_consumers_as_the_service_user(redis_url, shared_root):
    # given a consumer that records who imports it, and process.user = "nobody"
    out = shared_root / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    project = Project(shared_root, redis_url)
    project.consumer("who", f"""
        import os
        with open({str(out / "uid")!r}, "a") as f:
            f.write(f"{{os.getuid()}} {{os.getgid()}}\\n")
        def run(job):
            pass
    """)
    project.write_config([{"topic": "q", "consumer": "who:run"}], process='user = "nobody"')
    # when root runs `ssjobs check`
    done = ssjobs("check", "-c", str(project.config), cwd=shared_root)
    # then the consumer was imported once, as nobody, and the check passed
    assert done.returncode == 0, done.stdout + done.stderr
    nobody = pwd.getpwnam("nobody")
    assert (out / "uid").read_text().split() == [str(nobody.pw_uid), str(nobody.pw_gid)]


def scrape_status(port: int, token: str | None = None, timeout: float = 5) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, http.client.HTTPException):  # closed unanswered: every slot was taken
        return 0


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_the_metrics_endpoint_needs_its_token_and_survives_a_connection_flood(project):
    from ssjobs.metrics import MAX_CONNECTIONS, REQUEST_DEADLINE_S

    # given a master serving metrics behind a token
    project.consumer("rec", RECORD_IDS)
    port = free_port()
    project.write_config([{"topic": "q", "consumer": "rec:run"}], extra=textwrap.dedent(f"""
        [metrics]
        listen = "127.0.0.1:{port}"
        token = "{METRICS_TOKEN}"
        """))
    m = MasterProc(project.config, project.data_dir)
    flood: list[socket.socket] = []
    try:
        m.start()
        wait_for(lambda: "metrics served" in project.log_text(), what="metrics up")
        # then a scrape without the token, or with a wrong one, is refused
        assert scrape_status(port) == 401
        assert scrape_status(port, "wrong") == 401
        assert scrape_status(port, METRICS_TOKEN) == 200
        # when a client opens 60 connections and sends nothing, or a byte now and then
        before = threads_of(m.pid)
        for _ in range(60):
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        flood[0].sendall(b"GET /metrics HTTP/1.1\r\n")
        time.sleep(1.0)
        # then the master holds at most MAX_CONNECTIONS threads for them
        assert threads_of(m.pid) <= before + MAX_CONNECTIONS
        # and a scrape gets through within the deadline of the connections ahead of it
        started = time.monotonic()
        wait_for(lambda: scrape_status(port, METRICS_TOKEN, timeout=2) == 200,
                 timeout=REQUEST_DEADLINE_S + 10, what="a scrape during the flood")
        assert time.monotonic() - started < REQUEST_DEADLINE_S + 10
        # and the slow client was cut off: the connection is closed by the master
        flood[0].settimeout(REQUEST_DEADLINE_S + 5)
        try:
            while flood[0].recv(4096):
                pass
        except ConnectionError:
            pass
        assert m.proc.poll() is None
        assert m.stop() == 0
    finally:
        for conn in flood:
            conn.close()
        m.kill_all()
