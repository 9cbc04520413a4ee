"""The examples in docs/ run as written (against the tests' private Redis)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ssjobs.broker import TopicKeys
from ssjobs.envelope import decode

DOCS = Path(__file__).resolve().parent.parent / "docs"


def block_after(doc: str, marker: str, lang: str) -> str:
    """The first ```lang block after the HTML comment that names ``marker``."""
    text = (DOCS / doc).read_text()
    at = text.index(marker)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, at)
    assert match, f"no {lang} block after {marker} in {doc}"
    return match.group(1)


def test_the_raw_envelope_from_bash_is_a_valid_job(redis_server, rclient):
    script = block_after("protocol.md", "test_the_raw_envelope_from_bash", "sh")
    script = script.replace("redis-cli ", f"redis-cli -p {redis_server.port} ")
    subprocess.run(["bash", "-c", script], check=True, capture_output=True, timeout=30)
    (raw,) = rclient.lrange(TopicKeys("ssjobs", "mail.send").ready, 0, -1)
    job = decode(raw)
    assert (job.topic, job.payload, job.attempts, job.headers) == ("mail.send", "hello", 0, {})
    assert re.fullmatch(r"[0-9a-f]{32}", job.id)
    assert abs(job.enqueued_at - __import__("time").time()) < 60


def test_the_node_example_pushes_a_valid_job(redis_server, rclient, tmp_path):
    """Runs where node and its packages are: SSJOBS_NODE_MODULES names a directory whose
    node_modules holds @msgpack/msgpack and redis."""
    where = os.environ.get("SSJOBS_NODE_MODULES")
    if not shutil.which("node") or not where or not all(
            (Path(where) / "node_modules" / p).is_dir() for p in ("@msgpack/msgpack", "redis")):
        pytest.skip("node with @msgpack/msgpack and redis (SSJOBS_NODE_MODULES) not available")
    script = block_after("protocol.md", "test_the_node_example", "js")
    script = script.replace("redis://127.0.0.1:6379/0", redis_server.url)
    path = Path(where) / f"ssjobs-doc-example-{os.getpid()}.mjs"
    path.write_text(script)
    try:
        out = subprocess.run(["node", str(path)], check=True, capture_output=True, text=True,
                             timeout=60)
    finally:
        path.unlink()
    (raw,) = rclient.lrange(TopicKeys("ssjobs", "mail.send").ready, 0, -1)
    job = decode(raw)
    assert job.id == out.stdout.strip()
    assert job.payload == {"to": "a@b.c", "body": "hi"} and job.attempts == 0


def test_the_consumer_unit_test_example_passes(tmp_path):
    """docs/consumers.md shows how to test a consumer with a plain ssjobs.Job."""
    (tmp_path / "mail.py").write_text(block_after("consumers.md", "example: mail.py",
                                                  "python"))
    (tmp_path / "test_mail.py").write_text(block_after("consumers.md", "example: test_mail.py",
                                                       "python"))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(tmp_path / "test_mail.py")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
