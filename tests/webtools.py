"""Helpers of the dashboard tests: the dashboard served in a thread of the test process (so a
test can stand in a module, like a fake ``ssjobs.tracking``), plain HTTP, dead letters."""
from __future__ import annotations

import json as jsonlib
import socket
import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

from ssjobs import envelope
from ssjobs.broker import TopicKeys
from ssjobs.config import load_config

TEST_SAMPLE_S = 0.3    # the dashboard's refresh in tests (2 s in production)
SCRIPT = "<script>alert('xss')</script>"   # what an attacker puts in a payload


class Served:
    """``with Served(config_path, token=...) as web: web.url("/")``."""

    def __init__(self, config: Path, **options: Any) -> None:
        from ssjobs.config import WebConfig
        from ssjobs.web.server import build_server

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        web = WebConfig(listen=f"127.0.0.1:{self.port}", **options)
        self.server = build_server(load_config(config), web, sample_every=TEST_SAMPLE_S)
        self.root = options.get("root_path", "").rstrip("/")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base + self.root + path


class Reply(NamedTuple):
    status: int
    headers: dict[str, list[str]]
    text: str

    def header(self, name: str) -> str:
        return (self.headers.get(name.lower()) or [""])[0]

    def json(self) -> Any:
        return jsonlib.loads(self.text)

    def cookie(self, name: str) -> str | None:
        """The value a Set-Cookie of this reply gives ``name``."""
        for line in self.headers.get("set-cookie", []):
            key, _, rest = line.partition("=")
            if key == name:
                return rest.partition(";")[0]
        return None


def http(method: str, url: str, *, form: dict | list | None = None, json: Any = None,
         headers: dict[str, str] | None = None, cookie: str | None = None) -> Reply:
    """One request, redirects not followed."""
    parts = urlsplit(url)
    conn = HTTPConnection(parts.hostname, parts.port, timeout=15)
    head = dict(headers or {})
    body = None
    if form is not None:
        body = urlencode(form, doseq=True).encode()
        head["Content-Type"] = "application/x-www-form-urlencoded"
    elif json is not None:
        body = jsonlib.dumps(json).encode()
        head["Content-Type"] = "application/json"
    if cookie:
        head["Cookie"] = cookie
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""),
                     body=body, headers=head)
        res = conn.getresponse()
        found: dict[str, list[str]] = {}
        for key, value in res.getheaders():
            found.setdefault(key.lower(), []).append(value)
        return Reply(res.status, found, res.read().decode("utf-8", "replace"))
    finally:
        conn.close()


def add_dead(rclient, topic: str, payload: Any, *, prefix: str = "t", message: str = "boom",
             reason: str = "failed") -> str:
    """Dead-letter one job as a worker would (newest first); returns its id."""
    job_id = envelope.new_id()
    now = time.time()
    error = {"reason": reason, "type": "ValueError", "message": message,
             "traceback": f'Traceback (most recent call last):\n  File "c.py"\nValueError: '
                          f"{message}\n", "failed_at": now, "worker": "h1:10:abc/11-1"}
    raw = envelope.encode(job_id, topic, payload, 1, now - 5, {"error": error})
    rclient.lpush(TopicKeys(prefix, topic).dead, raw)
    return job_id


def csrf_of(page: str) -> str:
    """The CSRF token a page carries in its <meta name="csrf">."""
    marker = '<meta name="csrf" content="'
    start = page.index(marker) + len(marker)
    return page[start:page.index('"', start)]


# report.build in the web tests: a tracked topic whose consumer returns a result an attacker
# wrote, or, for {"hold": true}, reports progress and runs until it is cancelled.
TRACKED_CONSUMER = """
    def tracked(job):
        if (job.payload or {}).get("hold"):
            job.progress(0.4, "rows 4000/10000")
            deadline = time.time() + 30
            while not job.cancelled and time.time() < deadline:
                time.sleep(0.02)
            raise RuntimeError("stopped on request")
        return {"html": "<script>alert('xss')</script>"}
"""
TRACKED_TOPIC = {"topic": "report.build", "consumer": "demo:tracked", "track": True}


def wait_record(producer, job_id: str, ready, what: str, timeout: float = 15) -> dict:
    """The record of a job on report.build once ``ready(record)``."""
    from conftest import wait_for

    return wait_for(lambda: (r := producer.status("report.build", job_id)) and ready(r) and r,
                    timeout, what=what)
