"""The one-file binary (build_scripts/build_binary.sh), driven as an operator drives it, against
a private Redis: `--version`, `check`, a daemonized `start` whose consumers import stdlib
modules after the daemon started and a vendored pure-Python package, `status --json`, `stop`,
and nothing left behind: no process, no unpacked `_MEI*` dir.

Each test gives the binary its own TMPDIR, so the unpacked dirs it sees are only its own.
Skipped unless dist/ssjobs exists or $SSJOBS_BINARY names a binary.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT, wait_for

from ssjobs.embedded import ServerFiles, serving
from ssjobs.producer import Producer
from ssjobs.runtime import children, parent_pid, pid_alive

BINARY = Path(os.environ.get("SSJOBS_BINARY") or ROOT / "dist" / "ssjobs").resolve()
MARKER = "ssjobs-unpacked-here"  # written by build_scripts/rthook_ssjobs.py

pytestmark = [
    pytest.mark.binary,
    pytest.mark.skipif(not BINARY.is_file(), reason=f"no binary at {BINARY} "
                       "(build_scripts/build_binary.sh, or set SSJOBS_BINARY)"),
]

# What the issue promises a consumer can import from the binary, plus a few more.
STDLIB = ("sqlite3", "ssl", "smtplib", "email.mime.text", "csv", "json", "decimal", "zoneinfo",
          "concurrent.futures", "urllib.request", "xml.etree.ElementTree", "uuid", "gzip",
          "zipfile", "bz2", "lzma", "hashlib", "ctypes", "asyncio", "multiprocessing",
          "http.server", "xmlrpc.client", "unittest.mock", "logging.handlers", "tomllib",
          "tarfile", "pickle", "statistics", "secrets", "ipaddress", "importlib.metadata",
          "importlib.resources", "wsgiref.simple_server", "curses", "dbm", "mailbox",
          "encodings.idna", "unicodedata")

STDLIB_CONSUMER = f"""
import {", ".join(STDLIB)}
import tinyvendor

def handle(job):
    pass
"""

# Imports happen in the job, i.e. in a worker of the daemon, long after `start` returned and
# the files unpacked for the `start` command itself were deleted.
LAZY_CONSUMER = """
import os
import sys

def handle(job):
    import sqlite3
    import zoneinfo
    import tinyvendor
    from tinyvendor import extra

    row = sqlite3.connect(":memory:").execute("select ?", (job.payload["n"],)).fetchone()
    assert zoneinfo.ZoneInfo("UTC") is not None
    line = (f"{row[0]} {tinyvendor.VALUE} {extra.data()} {sqlite3.sqlite_version} "
            f"{sys._MEIPASS} {sys.executable}\\n")
    with open(os.path.join(job.payload["out"], f"{os.getpid()}.txt"), "a") as f:
        f.write(line)
"""


# -- helpers -------------------------------------------------------------------------------

@pytest.fixture
def tmpdir_env(tmp_path):
    """A private TMPDIR for the binary's unpacked dirs, and the environment that sets it."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SSJOBS_", "_PYI_", "PYINSTALLER_"))}
    env["TMPDIR"] = str(tmp)
    return tmp, env


def run(env: dict, *args: str, cwd: Path | None = None,
        timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([str(BINARY), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def unpacked_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("_MEI*"))


def children_of(pid: int) -> list[int]:
    return sorted(child for child, state in children(pid) if state != "Z")


def exe_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/exe")


def embedded_python(env: dict) -> str:
    line = run(env, "--version").stdout
    return re.search(r"\(Python (\d+\.\d+)", line)[1]


def write_vendor(root: Path) -> None:
    """What `pip install --target vendor tinyvendor` leaves: the package, its dist-info and
    a data file read through importlib.resources."""
    pkg = root / "vendor" / "tinyvendor"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('VALUE = "vendored-ok"\n')
    (pkg / "extra.py").write_text(textwrap.dedent("""
        from importlib import resources

        def data():
            return resources.files(__package__).joinpath("data.txt").read_text().strip()
    """))
    (pkg / "data.txt").write_text("data-ok\n")
    info = root / "vendor" / "tinyvendor-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyvendor\nVersion: 1.0\n")


def write_project(project, jobs: list[dict]) -> Path:
    write_vendor(project.root)
    path = project.write_config(jobs)
    text = path.read_text().replace('consumer_path = ["./consumers"]',
                                    'consumer_path = ["./consumers", "./vendor"]')
    path.write_text(text)
    return path


class Instance:
    """The processes of one daemonized binary: bootloader, master, workers (for the test's
    final check and for cleanup if it fails half-way)."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.bootloader = parent_pid(master)
        self.workers: set[int] = set()

    def see_workers(self) -> list[int]:
        current = children_of(self.master)
        self.workers.update(current)
        return current

    @property
    def pids(self) -> list[int]:
        return [self.bootloader, self.master, *sorted(self.workers)]

    def alive(self) -> list[int]:
        return [p for p in self.pids if pid_alive(p)]

    def kill(self) -> None:
        for pid in self.alive():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def instances():
    started: list[Instance] = []
    yield started
    for inst in started:
        inst.kill()


def start(env: dict, config: Path, instances: list[Instance]) -> Instance:
    done = run(env, "start", "-c", str(config))
    assert done.returncode == 0, done.stderr
    pid = int(re.search(r"started \(pid (\d+)\)", done.stdout)[1])
    inst = Instance(pid)
    instances.append(inst)
    return inst


# -- tests ---------------------------------------------------------------------------------

def test_version_names_the_embedded_python_and_leaves_nothing(tmpdir_env):
    tmp, env = tmpdir_env
    done = run(env, "--version")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"ssjobs \S+ \(Python 3\.\d+\.\d+, fastloop: (compiled|pure), "
                        r"redis-server \d+\.\d+\.\d+ bundled\)\n", done.stdout), done.stdout
    if os.environ.get("SSJOBS_BINARY_ALLOW_PURE") != "1":
        assert "fastloop: compiled" in done.stdout
    assert unpacked_dirs(tmp) == []


def test_check_imports_stdlib_and_vendored_packages(tmpdir_env, project):
    tmp, env = tmpdir_env
    project.consumer("stdlib_user", STDLIB_CONSUMER)
    config = write_project(project, [{"topic": "std", "consumer": "stdlib_user:handle"}])
    done = run(env, "check", "-c", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "consumer ok: stdlib_user:handle" in done.stdout
    assert "redis ok" in done.stdout
    assert unpacked_dirs(tmp) == []


def test_check_names_a_package_compiled_for_another_python(tmpdir_env, project):
    tmp, env = tmpdir_env
    pkg = project.root / "vendor" / "speedy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from ._speedups import go\n")
    # What `pip install --target` leaves when run by a Python 3.10 (never loaded: the name
    # alone tells the binary's Python it is not for it).
    (pkg / "_speedups.cpython-310-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    project.consumer("fast", "import speedy\n\ndef handle(job):\n    pass\n")
    path = project.write_config([{"topic": "fast", "consumer": "fast:handle"}])
    path.write_text(path.read_text().replace('consumer_path = ["./consumers"]',
                                             'consumer_path = ["./consumers", "./vendor"]'))
    done = run(env, "check", "-c", str(path))
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "fast:handle" in line]
    assert len(errors) == 1, done.stderr
    assert "package 'speedy'" in errors[0]
    assert "built for Python 3.10" in errors[0]
    assert f"runs Python {embedded_python(env)}" in errors[0]


def test_daemon_runs_jobs_that_import_after_start_then_stops_clean(tmpdir_env, project,
                                                                  redis_url, instances):
    tmp, env = tmpdir_env
    out = project.root / "out"
    out.mkdir()
    project.consumer("lazy", LAZY_CONSUMER)
    config = write_project(project, [{"topic": "bin.lazy", "consumer": "lazy:handle",
                                      "static_workers": 2, "batch_size": 50}])

    done = run(env, "check", "-c", str(config))
    assert done.returncode == 0, done.stdout + done.stderr

    inst = start(env, config, instances)
    # The pid file and `start` name the Python master, whose parent is the daemon's own
    # bootloader (the `start` command and its unpacked dir are gone by now).
    assert int((project.data_dir / "ssjobs.pid").read_text()) == inst.master
    assert inst.bootloader != 1 and exe_of(inst.bootloader) == str(BINARY)
    dirs = unpacked_dirs(tmp)
    assert len(dirs) == 1, dirs  # the daemon's; `start`'s was removed when it exited
    daemon_dir = dirs[0]
    assert (daemon_dir / MARKER).exists()
    workers = wait_for(lambda: len(inst.see_workers()) == 2 and inst.see_workers(),
                       what="2 workers")
    for pid in workers:  # forked from the master, not re-executed
        assert exe_of(pid) == str(BINARY)
        assert parent_pid(pid) == inst.master

    with Producer(redis_url, prefix="t") as producer:
        producer.push_many("bin.lazy", [{"n": n, "out": str(out)} for n in range(1000)])

    def handled() -> list[str]:
        return [line for f in out.glob("*.txt") for line in f.read_text().splitlines()]

    wait_for(lambda: len(handled()) >= 1000, timeout=60, what="1,000 jobs handled")
    lines = handled()
    assert sorted(int(line.split()[0]) for line in lines) == list(range(1000))
    for line in lines:
        _, value, data, _, meipass, executable = line.split()
        assert (value, data) == ("vendored-ok", "data-ok")
        assert meipass == str(daemon_dir)
        assert executable == str(BINARY)
    assert {int(f.stem) for f in out.glob("*.txt")} <= set(workers)

    done = run(env, "status", "--json", "-c", str(config))
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["running"] is True
    assert status["master"]["pid"] == inst.master
    topic = status["topics"]["bin.lazy"]
    assert (topic["processed"], topic["failed"], topic["dead"]) == (1000, 0, 0)
    assert sorted(w["pid"] for w in status["workers"]) == sorted(workers)

    inst.see_workers()
    done = run(env, "stop", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert f"pid {inst.master}" in done.stdout
    wait_for(lambda: not inst.alive(), timeout=15, what="bootloader, master, workers gone")
    wait_for(lambda: unpacked_dirs(tmp) == [], timeout=5, what="unpacked dirs removed")
    assert not (project.data_dir / "ssjobs.pid").exists()


def test_dir_of_a_killed_instance_is_removed_at_next_start(tmpdir_env, project, redis_url,
                                                           instances):
    tmp, env = tmpdir_env
    project.consumer("lazy", LAZY_CONSUMER)
    config = write_project(project, [{"topic": "bin.kill", "consumer": "lazy:handle"}])

    killed = start(env, config, instances)
    wait_for(killed.see_workers, what="a worker")
    [killed_dir] = unpacked_dirs(tmp)
    for pid in (killed.bootloader, killed.master):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not killed.alive(), timeout=15, what="killed instance gone")
    assert killed_dir.is_dir()  # nobody removed it: that is the trap

    # Dirs that are not ours to remove: another program's (no marker); one whose bootloader
    # is dead but that a process still uses (locked); one whose bootloader still lives (it
    # is removing the dir itself right now).
    dead = subprocess.Popen(["true"])
    dead.wait()
    foreign = tmp / "_MEIforeign"
    foreign.mkdir()
    busy = tmp / "_MEIbusy"
    busy.mkdir()
    (busy / MARKER).write_text(f"{dead.pid} bootloader, {dead.pid} python\n")
    closing = tmp / "_MEIclosing"
    closing.mkdir()
    (closing / MARKER).write_text(f"{os.getpid()} bootloader, {os.getpid()} python\n")
    busy_fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(busy_fd, fcntl.LOCK_SH)
    try:
        inst = start(env, config, instances)
        assert not killed_dir.exists()
        assert foreign.is_dir() and busy.is_dir() and closing.is_dir()
        done = run(env, "stop", "-c", str(config))
        assert done.returncode == 0, done.stderr
        inst.see_workers()
        wait_for(lambda: not inst.alive(), timeout=15, what="second instance gone")
    finally:
        os.close(busy_fd)
    wait_for(lambda: unpacked_dirs(tmp) == [busy, closing, foreign], timeout=5,
             what="only the foreign, busy and closing dirs left")
    run(env, "--version")  # `busy` is free now: removed; the others are not ours to remove
    assert unpacked_dirs(tmp) == [closing, foreign]


def test_version_is_quick(tmpdir_env):
    """Unpacking happens at every start: keep it small (goal: 0.5 s; generous bound here)."""
    _, env = tmpdir_env
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        assert run(env, "--version").returncode == 0
        times.append(time.perf_counter() - t0)
    assert sorted(times)[2] < 2.0, times


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
def test_daemon_dropping_privileges_keeps_its_unpacked_files_importable(redis_url, instances):
    """process.user: the daemon unpacked as root (a 0700 dir); after it becomes 'nobody', its
    workers must still import from that dir."""
    import pwd
    import shutil
    import tempfile

    from conftest import Project

    nobody = pwd.getpwnam("nobody")
    root = Path(tempfile.mkdtemp(prefix="ssjobs-bin-user-"))
    try:
        root.chmod(0o755)
        tmp, out = root / "tmp", root / "out"
        for d in (tmp, out):
            d.mkdir()
            d.chmod(0o1777)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SSJOBS_", "_PYI_", "PYINSTALLER_"))}
        env["TMPDIR"] = str(tmp)
        project = Project(root, redis_url)
        project.consumer("lazy", LAZY_CONSUMER)
        config = write_project(project, [{"topic": "bin.user", "consumer": "lazy:handle"}])
        config.write_text(config.read_text().replace("[process]", '[process]\nuser = "nobody"'))
        inst = start(env, config, instances)
        with Producer(redis_url, prefix="t") as producer:
            producer.push_many("bin.user", [{"n": n, "out": str(out)} for n in range(20)])
        wait_for(lambda: sum(len(f.read_text().splitlines()) for f in out.glob("*.txt")) >= 20,
                 timeout=30, what="20 jobs handled as nobody")
        for pid in [inst.master, *inst.see_workers()]:
            assert os.stat(f"/proc/{pid}").st_uid == nobody.pw_uid
        done = run(env, "stop", "-c", str(config))
        assert done.returncode == 0, done.stderr
        wait_for(lambda: not inst.alive(), timeout=15, what="all gone")
        wait_for(lambda: unpacked_dirs(tmp) == [], timeout=5, what="unpacked dir removed")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_binary_serves_the_dashboard_with_its_templates_and_assets(tmpdir_env, project,
                                                                         rclient):
    """`ssjobs web` inside the binary: the stack, the templates and the static files are in
    the bundle (a page renders, its stylesheet is served), and SIGTERM stops it with 0."""
    from redis_server import free_port
    from webtools import add_dead, http

    tmp, env = tmpdir_env
    config = write_project(project, [{"topic": "web.t", "consumer": "c:handle"}])
    add_dead(rclient, "web.t", {"html": "<script>x</script>"}, prefix="t")
    port = free_port()
    proc = subprocess.Popen([str(BINARY), "web", "-c", str(config), "--listen",
                             f"127.0.0.1:{port}"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        def page():
            try:
                return http("GET", f"http://127.0.0.1:{port}/topics/web.t")
            except OSError:
                return None

        topic = wait_for(page, 30, what="the binary's dashboard")
        css = http("GET", f"http://127.0.0.1:{port}/static/app.css")
        api = http("GET", f"http://127.0.0.1:{port}/api/overview").json()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    assert topic.status == 200 and "&lt;script&gt;x&lt;/script&gt;" in topic.text
    assert css.status == 200 and "prefers-color-scheme" in css.text
    assert api["topics"]["web.t"]["dead"] == 1
    assert code == 0, proc.stderr.read()
    assert unpacked_dirs(tmp) == []


GLIBC = {"libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
         "libpthread.so.0", "libdl.so.2", "librt.so.1"}


def test_embedded_redis_runs_from_the_bundle_with_no_redis_server_on_path(tmpdir_env, project,
                                                                         instances):
    """url = "embedded" on a server with nothing installed: the binary's own redis-server
    and its libraries, started, restarted after a SIGKILL, and stopped with the master."""
    tmp, env = tmpdir_env
    env["PATH"] = "/nonexistent"  # no redis-server, no python: only the binary
    out = project.root / "out"
    out.mkdir()
    project.redis_url = "embedded"
    project.consumer("lazy", LAZY_CONSUMER)
    config = write_project(project, [{"topic": "bin.emb", "consumer": "lazy:handle",
                                      "static_workers": 2}])
    done = run(env, "check", "-c", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "redis-server 7." in done.stdout and "bundled in this ssjobs binary" in done.stdout

    inst = start(env, config, instances)
    files = ServerFiles(project.data_dir)

    def server_pid() -> int:
        return int(files.pid_path.read_text().split()[0])

    [daemon_dir] = unpacked_dirs(tmp)
    first = server_pid()
    inst.workers.add(first)  # killed by the fixture if the test fails half-way
    assert parent_pid(first) == inst.master
    assert exe_of(first) == str(daemon_dir / "ssjobs-redis" / "redis-server")
    libraries = {line.split()[-1] for line in open(f"/proc/{first}/maps")
                 if ".so" in line.split()[-1]}
    outside = {Path(lib).name for lib in libraries if not lib.startswith(str(daemon_dir))}
    assert outside <= GLIBC, outside  # every other library comes from the bundle
    assert {"libjemalloc.so.2", "liblzf.so.1"} <= {Path(lib).name for lib in libraries}
    assert (daemon_dir / "ssjobs-redis" / "licenses" / "redis-server.copyright").is_file()

    with Producer.from_config(config) as producer:
        producer.push_many("bin.emb", [{"n": n, "out": str(out)} for n in range(100)])

    def handled() -> int:
        return sum(len(f.read_text().splitlines()) for f in out.glob("*.txt"))

    wait_for(lambda: handled() >= 100, timeout=60, what="100 jobs handled")
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: server_pid() != first, timeout=15, what="the server restarted")
    second = server_pid()
    inst.workers.add(second)
    assert exe_of(second) == str(daemon_dir / "ssjobs-redis" / "redis-server")
    with Producer.from_config(config) as producer:
        producer.push_many("bin.emb", [{"n": n, "out": str(out)} for n in range(100, 200)])
    wait_for(lambda: handled() >= 200, timeout=60, what="200 jobs handled")

    done = run(env, "status", "--json", "-c", str(config))
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["topics"]["bin.emb"]["processed"] == 200
    er = status["embedded_redis"]
    assert (er["running"], er["pid"], er["bundled"], er["restarts"]) == (True, second, True, 1)

    inst.see_workers()
    done = run(env, "stop", "-c", str(config))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: not inst.alive(), timeout=15, what="master, workers, redis-server gone")
    wait_for(lambda: unpacked_dirs(tmp) == [], timeout=5, what="unpacked dir removed")
    assert serving(files) == [] and not files.pid_path.exists()
