"""The one redaction function: passwords, tokens and registered secrets never printed."""
from __future__ import annotations

import logging

import pytest

from ssjobs import logs, redact
from ssjobs.notify.base import redact as notifier_origin


@pytest.mark.parametrize("text, hidden, kept", [
    ("redis://:hunter22@10.0.0.1:6379/0", "hunter22", "redis://:***@10.0.0.1:6379/0"),
    ("rediss://app:p@ss@cache:6380", "p@ss", "rediss://app:***@cache:6380"),
    ("redis://10.0.0.1:6379/0?password=hunter22&db=1", "hunter22",
     "redis://10.0.0.1:6379/0?password=***&db=1"),
    ("unreachable: redis+sentinel://:pw0rd@h1:26379,h2/svc (timeout)", "pw0rd",
     "redis+sentinel://:***@h1:26379,h2/svc (timeout)"),
    ("https://oapi.dingtalk.com/robot/send?access_token=abcdef123&timestamp=1&sign=Zm9v",
     "abcdef123", "access_token=***&timestamp=1&sign=***"),
    ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=0123-4567", "0123-4567", "key=***"),
    ("connect failed: api_token=t0k3n, retrying", "t0k3n", "api_token=***, retrying"),
])
def test_urls_and_assignments_lose_their_secrets(text, hidden, kept):
    shown = redact.redact(text)
    assert hidden not in shown and kept in shown


def test_text_without_secrets_is_unchanged():
    for text in ("job 01H failed (attempt 2): KeyError: 'to'", "redis://127.0.0.1:6379/0",
                 "http://host:8080/path@x", "a = b", ""):
        assert redact.redact(text) == text


def test_a_registered_secret_is_masked_even_bare():
    redact.register_secret("dt-token-0123456789")
    redact.register_secret("xxxx")  # too short to register: it would mask ordinary text
    shown = redact.redact("dingtalk refused: invalid token dt-token-0123456789 (xxxx)")
    assert "dt-token-0123456789" not in shown and "(xxxx)" in shown


def test_a_webhook_path_registered_from_the_config_is_masked():
    redact.register_url_secrets("https://hooks.slack.com/services/T000/B000/XXXXYYYY",
                                path_too=True)
    shown = redact.redact("POST https://hooks.slack.com/services/T000/B000/XXXXYYYY: 404")
    assert "XXXXYYYY" not in shown and "hooks.slack.com" in shown


def test_the_notifier_origin_keeps_no_userinfo_password():
    assert notifier_origin("https://bot:s3cr3t@hooks.example/x/y") == "https://bot:***@hooks.example"


def test_log_records_are_redacted_in_text_and_json(tmp_path):
    for fmt in ("text", "json"):
        logs.setup_logging(tmp_path / fmt, fmt=fmt)
        try:
            log = logging.getLogger("ssjobs.test")
            log.error("cannot reach redis://:hunter22@db:6379/0")
            try:
                raise RuntimeError("auth failed with password=hunter22")
            except RuntimeError:
                log.exception("boom")
        finally:
            logs.reset_logging()
        text = (tmp_path / fmt / logs.LOG_FILE_NAME).read_text()
        assert "hunter22" not in text and "redis://:***@db:6379/0" in text
        assert "password=***" in text
