from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from redis_server import RedisServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start(redis_server.port)
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def rclient(redis_server, redis_url):
    client = redis_server.client()
    yield client
    client.close()


# A consumer module ("rec:run") that appends each job id to $SSJOBS_TEST_OUT, one per line.
RECORD_IDS = """
    import os
    def run(job):
        fd = os.open(os.environ["SSJOBS_TEST_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{job.id}\\n".encode())
        os.close(fd)
"""


def nobody_can_run_ssjobs() -> bool:
    """True when user ``nobody`` can run this Python and import ssjobs from it: a master
    that drops privileges keeps importing (consumers, the standard library) afterwards."""
    if os.getuid() != 0:
        return False
    try:
        return subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             sys.executable, "-P", "-c", "import secrets, ssjobs.master"],
            capture_output=True, timeout=30, cwd="/").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = ""):
    """Poll until predicate() is truthy; fail the test with ``what`` after ``timeout``."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class Project:
    """A temp config dir: config file, consumer dir, data dir."""

    def __init__(self, root: Path, redis_url: str) -> None:
        self.root = root
        self.redis_url = redis_url
        self.consumers = root / "consumers"
        self.consumers.mkdir()
        self.config = root / "jobs.toml"
        self.data_dir = root / "data" / "process"
        self.log_dir = root / "data" / "logs"

    def consumer(self, name: str, source: str) -> None:
        (self.consumers / f"{name}.py").write_text(textwrap.dedent(source))

    def write_config(self, jobs: list[dict], extra: str = "", process: str = "") -> Path:
        lines = [
            "[process]", 'data_dir = "./data/process"', 'consumer_path = ["./consumers"]',
            "stop_timeout = 10", process, "", "[log]", 'dir = "./data/logs"',
            'level = "debug"', "", "[redis]", f'url = "{self.redis_url}"', 'prefix = "t"', "",
            extra,
        ]
        for job in jobs:
            lines.append("[[jobs]]")
            for key, value in job.items():
                lines.append(f"{key} = {_toml(value)}")
            lines.append("")
        self.config.write_text("\n".join(lines))
        return self.config

    def log_text(self) -> str:
        path = self.log_dir / "ssjobs.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


@pytest.fixture
def project(tmp_path, redis_url):
    return Project(tmp_path, redis_url)


def spawn_worker(project: Project, topic: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ)
    return subprocess.Popen([sys.executable, "-m", "ssjobs.worker", "-c", str(project.config),
                             topic, *extra], env=env, cwd=project.root)


@pytest.fixture
def procs():
    """Processes a test started; all killed (by pid) at the end."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)
