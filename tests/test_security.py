"""Local security (docs/security.md): each hole tried as an attacker on the host would try
it, against a real master, as root and as user ``nobody``; each attack must fail harmlessly.

Anything ``nobody`` must reach lives in a ``tempfile.mkdtemp`` dir (pytest's own tmp dirs
are root's 0700). The targets an attack aims at are root-only files in ``tmp_path``.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
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
