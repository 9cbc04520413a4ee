"""Notifiers against a real HTTP server on 127.0.0.1, and the background AsyncSender."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import wait_for

from ssjobs.errors import NotifyError, SsjobsError
from ssjobs.logs import add_error_sink, remove_error_sink
from ssjobs.notify import (
    AsyncSender,
    NotifyHTTPError,
    NotifyRejected,
    NotifyUnreachable,
    error_sink,
    make_notifier,
    send_test_message,
)
from ssjobs.notify.dingtalk import DingTalkNotifier
from ssjobs.notify.wecom import WeComNotifier

OK_JSON = b'{"errcode": 0, "errmsg": "ok"}'


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected here


class Endpoint:
    """A webhook receiver on a free 127.0.0.1 port, recording every POST."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.status, self.answer, self.delay = 200, OK_JSON, 0.0
        self.release = threading.Event()  # ends every pending delay at teardown
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                parts = urllib.parse.urlsplit(self.path)
                endpoint.seen.append(Seen(parts.path, dict(urllib.parse.parse_qsl(parts.query)),
                                          {k.lower(): v for k, v in self.headers.items()},
                                          json.loads(raw)))
                if endpoint.delay:
                    endpoint.release.wait(endpoint.delay)
                self.send_response(endpoint.status)
                self.send_header("Content-Length", str(len(endpoint.answer)))
                self.end_headers()
                self.wfile.write(endpoint.answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def reply(self, status: int = 200, answer: bytes = OK_JSON, delay: float = 0.0) -> None:
        self.status, self.answer, self.delay = status, answer, delay

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Seen]:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.seen

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # traffic must stay on 127.0.0.1


@pytest.fixture
def server() -> Any:
    endpoint = Endpoint()
    yield endpoint
    endpoint.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the test's own signatures, written from the platforms' documentation --------------------

def dingtalk_signature(secret: str, timestamp_ms: str) -> str:
    string_to_sign = f"{timestamp_ms}\n{secret}".encode()
    return base64.b64encode(hmac.new(secret.encode(), string_to_sign, hashlib.sha256).digest()
                            ).decode()


def feishu_signature(secret: str, timestamp_s: str) -> str:
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


# -- DingTalk --------------------------------------------------------------------------------

def test_dingtalk_posts_markdown_to_the_given_url(server: Endpoint) -> None:
    notifier = make_notifier("dingtalk", {"url": server.url("/robot/send?access_token=t1"),
                                          "prefix": "[prod]"})
    notifier.send("job failed", "line one\nline two")
    (req,) = server.seen
    assert req.path == "/robot/send" and req.query == {"access_token": "t1"}
    assert req.headers["content-type"].startswith("application/json")
    assert req.body == {"msgtype": "markdown", "markdown": {
        "title": "[prod] job failed", "text": "#### [prod] job failed\n\nline one\n\nline two"}}


def test_dingtalk_signs_with_timestamp_in_ms_and_hmac_of_timestamp_and_secret(
        server: Endpoint) -> None:
    secret = "SEC0123456789abcdef+/="
    make_notifier("dingtalk", {"url": server.url("/robot/send?access_token=t1"),
                               "secret": secret}).send("t", "x")
    query = server.seen[0].query  # parse_qsl undoes the URL-encoding
    assert abs(int(query["timestamp"]) - time.time() * 1000) < 60_000
    assert query["sign"] == dingtalk_signature(secret, query["timestamp"])
    assert query["access_token"] == "t1"


def test_dingtalk_token_builds_the_official_url_without_sending() -> None:
    notifier = DingTalkNotifier(token="abc123", secret="s3cret")
    assert notifier.url == "https://oapi.dingtalk.com/robot/send?access_token=abc123"
    expected = urllib.parse.quote_plus(dingtalk_signature("s3cret", "1700000000000"))
    assert notifier.signed_url(1700000000000) == (
        f"{notifier.url}&timestamp=1700000000000&sign={expected}")
    assert DingTalkNotifier(token="abc123").signed_url() == notifier.url


def test_dingtalk_nonzero_errcode_is_an_error_with_its_message(server: Endpoint) -> None:
    server.reply(answer=b'{"errcode": 310000, "errmsg": "sign not match"}')
    with pytest.raises(NotifyRejected, match="310000: sign not match") as info:
        make_notifier("dingtalk", {"url": server.url()}).send("t", "x")
    assert info.value.code == 310000


def test_dingtalk_needs_a_token_or_a_url() -> None:
    with pytest.raises(NotifyError, match="token or params.url"):
        make_notifier("dingtalk", {"secret": "x"})


# -- webhook, Slack, Feishu, WeCom ---------------------------------------------------------

def test_webhook_body_has_exactly_the_documented_fields_plus_alert_fields(
        server: Endpoint) -> None:
    notifier = make_notifier("webhook", {"url": server.url(), "prefix": "[prod]",
                                         "headers": {"X-Token": "t0k"}})
    notifier.send("backlog high", "mail.send has 5000 jobs", level="warning",
                  topic="mail.send", alert="backlog")
    (req,) = server.seen
    assert set(req.body) == {"title", "text", "level", "host", "time", "topic", "alert"}
    assert req.body["title"] == "[prod] backlog high"
    assert (req.body["level"], req.body["topic"], req.body["alert"]) == (
        "warning", "mail.send", "backlog")
    assert req.body["host"] == socket.gethostname()
    assert abs(req.body["time"] - time.time()) < 60
    assert req.headers["x-token"] == "t0k"


def test_slack_sends_bold_title_and_escaped_text(server: Endpoint) -> None:
    server.reply(answer=b"ok")
    make_notifier("slack", {"url": server.url("/services/T/B/X")}).send(
        "boom", 'File "<module>" & more')
    assert server.seen[0].body == {"text": '*boom*\nFile "&lt;module&gt;" &amp; more'}


def test_slack_error_status_carries_slacks_reason(server: Endpoint) -> None:
    server.reply(403, b"invalid_token")
    with pytest.raises(NotifyHTTPError) as info:
        make_notifier("slack", {"url": server.url()}).send("t", "x")
    assert info.value.status == 403
    assert str(info.value) == "HTTP 403: Forbidden (invalid_token)"


def test_feishu_signs_with_timestamp_in_seconds_as_hmac_key(server: Endpoint) -> None:
    server.reply(answer=b'{"code": 0, "msg": "success", "data": {}}')
    make_notifier("feishu", {"url": server.url("/open-apis/bot/v2/hook/abc"),
                             "secret": "fs-secret", "prefix": "[p]"}).send("t", "body")
    body = server.seen[0].body
    assert set(body) == {"timestamp", "sign", "msg_type", "content"}
    assert isinstance(body["timestamp"], str) and abs(int(body["timestamp"]) - time.time()) < 60
    assert body["sign"] == feishu_signature("fs-secret", body["timestamp"])
    assert body["msg_type"] == "text" and body["content"] == {"text": "[p] t\nbody"}


def test_feishu_without_secret_and_its_two_answer_styles(server: Endpoint) -> None:
    server.reply(answer=b'{"StatusCode": 0, "StatusMessage": "success"}')
    make_notifier("feishu", {"url": server.url()}).send("t", "x")
    assert set(server.seen[0].body) == {"msg_type", "content"}
    server.reply(answer=b'{"code": 19021, "msg": "sign match fail"}')
    with pytest.raises(NotifyRejected, match="19021: sign match fail"):
        make_notifier("feishu", {"url": server.url()}).send("t", "x")


def test_wecom_sends_markdown_content_and_checks_errcode(server: Endpoint) -> None:
    make_notifier("wecom", {"url": server.url("/cgi-bin/webhook/send?key=k1")}).send("t", "x")
    body = server.seen[0].body
    assert body["msgtype"] == "markdown" and set(body["markdown"]) == {"content"}
    assert "**t**" in body["markdown"]["content"] and body["markdown"]["content"].endswith("\nx")
    server.reply(answer=b'{"errcode": 93000, "errmsg": "invalid webhook url"}')
    with pytest.raises(NotifyRejected, match="93000"):
        make_notifier("wecom", {"url": server.url()}).send("t", "x")
    assert WeComNotifier(key="k 1").url == (
        "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k%201")


def test_wecom_content_is_cut_to_the_platform_limit(server: Endpoint) -> None:
    make_notifier("wecom", {"url": server.url()}).send("t", "é" * 5000)
    content = server.seen[0].body["markdown"]["content"]
    assert len(content.encode()) <= 4096 and content.endswith("(truncated)")


@pytest.mark.parametrize("kind", ["dingtalk", "webhook", "slack", "feishu", "wecom"])
def test_every_channel_reports_the_http_status(server: Endpoint, kind: str) -> None:
    server.reply(500, b"")
    with pytest.raises(NotifyHTTPError) as info:
        make_notifier(kind, {"url": server.url()}).send("t", "x")
    assert info.value.status == 500
    assert str(info.value) == "HTTP 500: Internal Server Error"


def test_unreachable_and_slow_endpoints_are_notify_errors(server: Endpoint) -> None:
    with pytest.raises(NotifyUnreachable, match="cannot reach http://127.0.0.1"):
        make_notifier("webhook", {"url": f"http://127.0.0.1:{free_port()}/x"}).send("t", "x")
    server.reply(delay=5)
    started = time.monotonic()
    with pytest.raises(NotifyUnreachable):
        make_notifier("webhook", {"url": server.url()}, timeout=0.3).send("t", "x")
    assert time.monotonic() - started < 2


def test_error_messages_never_show_the_secret_part_of_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/robot/send?access_token=SECRET-TOKEN"
    with pytest.raises(NotifyError) as info:
        make_notifier("dingtalk", {"url": url}).send("t", "x")
    assert "SECRET-TOKEN" not in str(info.value)


# -- make_notifier and check --notify ------------------------------------------------------

def test_make_notifier_refuses_unknown_kinds_and_params() -> None:
    with pytest.raises(NotifyError, match="unknown notifier 'telegram'"):
        make_notifier("telegram", {})
    with pytest.raises(NotifyError, match="bad params"):
        make_notifier("slack", {"url": "http://127.0.0.1:1/", "colour": "red"})
    with pytest.raises(NotifyError, match="params.url must be an http"):
        make_notifier("webhook", {"url": "file:///etc/passwd"})
    with pytest.raises(NotifyError, match="cannot be imported"):
        make_notifier("no_such_module_xyz:Thing", {})
    assert issubclass(NotifyError, SsjobsError)


def test_make_notifier_loads_a_user_class_with_its_params(tmp_path: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_alerts.py").write_text(
        "class Pager:\n"
        "    def __init__(self, *, room):\n"
        "        self.room, self.sent = room, []\n"
        "    def send(self, title, text, level='error', **fields):\n"
        "        self.sent.append((title, text, level, fields))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    notifier = make_notifier("my_alerts:Pager", {"room": "ops"})
    assert notifier.room == "ops"  # type: ignore[attr-defined]
    assert send_test_message(notifier) is None
    assert notifier.sent[0][0] == "ssjobs test message"  # type: ignore[attr-defined]


def test_send_test_message_returns_none_or_the_exact_error(server: Endpoint) -> None:
    notifier = make_notifier("webhook", {"url": server.url()})
    assert send_test_message(notifier) is None
    assert server.seen[0].body["level"] == "info"
    server.reply(500, b"")
    assert send_test_message(notifier) == "HTTP 500: Internal Server Error"


# -- AsyncSender ---------------------------------------------------------------------------

def test_a_hanging_endpoint_never_blocks_submit_and_close_keeps_its_timeout(
        server: Endpoint) -> None:
    server.reply(delay=30)
    sender = AsyncSender(make_notifier("webhook", {"url": server.url()}, timeout=5))
    started = time.monotonic()
    results = [sender.submit("t", f"message {i}") for i in range(1000)]
    assert time.monotonic() - started < 0.2
    assert results[0] is True
    started = time.monotonic()
    assert sender.close(timeout=0.3) is False
    assert time.monotonic() - started < 0.6


def test_a_failing_endpoint_is_retried_once_logged_and_never_raised(
        server: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    server.reply(500, b"")
    sender = AsyncSender(make_notifier("webhook", {"url": server.url()}), retry_backoff=0.01)
    caplog.set_level(logging.DEBUG, logger="ssjobs")
    started = time.monotonic()
    assert all(sender.submit("t", f"message {i}") for i in range(3))
    assert time.monotonic() - started < 0.2
    assert sender.close(timeout=5) is True
    assert len(server.seen) == 6  # two tries each
    assert sender.failed == 3 and sender.sent == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 500: Internal Server Error" in warnings[0].getMessage()


def test_a_client_error_is_not_retried_and_recovery_is_logged(
        server: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    server.reply(400, b"bad")
    sender = AsyncSender(make_notifier("webhook", {"url": server.url()}), retry_backoff=0.01)
    caplog.set_level(logging.INFO, logger="ssjobs")
    sender.submit("t", "first")
    server.wait_for(1)
    time.sleep(0.1)
    server.reply(200, b"")
    sender.submit("t", "second")
    assert sender.close(timeout=5) is True
    assert [s.body["text"] for s in server.seen] == ["first", "second"]
    assert any("recovered" in r.getMessage() for r in caplog.records)


def test_a_full_queue_drops_and_counts(server: Endpoint) -> None:
    server.reply(delay=30)
    sender = AsyncSender(make_notifier("webhook", {"url": server.url()}), max_queue=10)
    accepted = sum(sender.submit("t", f"m{i}") for i in range(100))
    assert 10 <= accepted <= 11  # one may already be in flight
    assert sender.dropped == 100 - accepted
    sender.close(timeout=0.1)


def test_repeats_are_suppressed_then_counted_in_the_next_message(server: Endpoint) -> None:
    sender = AsyncSender(make_notifier("webhook", {"url": server.url()}), repeat_interval=0.5)
    assert sender.submit("Redis down", "connection refused") is True
    assert [sender.submit("Redis down", "connection refused") for _ in range(4)] == [False] * 4
    assert sender.submit("other", "text") is True  # another key is not held back
    assert sender.submit("x", "one", key="k") is True
    assert sender.submit("x", "two", key="k") is False  # same explicit key, other text
    assert sender.suppressed == 5
    time.sleep(0.55)
    assert sender.submit("Redis down", "connection refused") is True
    assert sender.close(timeout=5) is True
    texts = [s.body["text"] for s in server.seen]
    assert texts[:3] == ["connection refused", "text", "one"]
    assert re.fullmatch(r"connection refused\n\n\(suppressed 4 similar messages in the last "
                        r"0\.[5-9] s\)", texts[3])


def test_close_drains_the_queue_and_later_submits_are_refused(server: Endpoint) -> None:
    sender = AsyncSender(make_notifier("webhook", {"url": server.url()}))
    for i in range(20):
        sender.submit("t", f"m{i}")
    assert sender.close(timeout=5) is True
    assert len(server.seen) == 20 and sender.sent == 20
    assert sender.submit("t", "late") is False


def test_error_sink_forwards_error_log_lines_with_job_fields(server: Endpoint) -> None:
    sender = AsyncSender(make_notifier("webhook", {"url": server.url()}))
    sink = error_sink(sender)
    add_error_sink(sink)
    try:
        log = logging.getLogger("ssjobs.worker")
        log.info("not forwarded")
        for job in ("j1", "j2"):  # the same failure on two jobs is sent once
            try:
                raise ValueError("bad payload")
            except ValueError:
                log.exception("job %r failed", job,
                              extra={"job_id": job, "topic": "mail.send", "attempt": 1})
    finally:
        remove_error_sink(sink)
    assert sender.close(timeout=5) is True
    req, summary = server.seen  # the second is held back, then summed up at close
    assert req.body["level"] == "error" and req.body["topic"] == "mail.send"
    assert req.body["job_id"] == "j1" and req.body["attempt"] == 1
    assert "ValueError: bad payload" in req.body["text"]
    assert summary.body["text"].startswith("1 more message like this in the last ")
    assert "job 'j2' failed" in summary.body["text"] and summary.body["job_id"] == "j2"


def test_a_failure_storm_of_one_topic_is_one_message_per_interval_with_a_count(
        server: Endpoint) -> None:
    """Issue 13.10: one ERROR notification per failed attempt flooded the channel."""
    sender = AsyncSender(make_notifier("webhook", {"url": server.url()}), repeat_interval=0.5)
    sink = error_sink(sender)
    for n in range(1, 21):  # different errors, one topic
        sink({"level": "ERROR", "role": "worker q #1", "logger": "ssjobs.worker",
              "msg": f"job j{n} on 'q' failed (attempt 1): KeyError: 'field{n}'",
              "job_id": f"j{n}", "topic": "q", "attempt": 1})
    wait_for(lambda: len(server.seen) == 2, 5, what="the summary")  # no close needed
    first, summary = (r.body["text"] for r in server.seen)
    assert "field1'" in first
    assert re.match(r"19 more messages like this in the last [\d.]+ s; the last one:\n\n"
                    r"job j20 on 'q' failed", summary), summary
    assert sender.close(timeout=5) is True and len(server.seen) == 2
