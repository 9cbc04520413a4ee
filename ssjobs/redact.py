"""The one place that takes secrets out of text before ssjobs prints, logs or sends it.

:func:`redact` is used for every line a URL or a secret can reach: ``status`` (text and
JSON, and the snapshot), ``check``, ``top``, error lines, log records (text, JSON, and what
the relay forwards to the notifier) and the metrics' log lines. It masks

- the password of a URL's userinfo (``redis://user:***@host``),
- the value of any ``name=value`` whose name looks secret (``password``, ``token``,
  ``secret``, ``key``, ``sign``, ``auth``...), in a query string or in free text,
- every value registered with :func:`register_secret`: the config registers notifier
  tokens, secrets and webhook paths, the metrics token and Redis passwords, so they are
  masked even where they appear bare (a notifier's error message quoting its token).

Layer 0: it imports nothing from ssjobs, so even ``errors`` and ``logs`` may use it.
"""
from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

MASK = "***"
MIN_SECRET_CHARS = 8  # shorter values occur by chance in ordinary text ("xxxx"); in a URL
                      # or a name=value pair, a short one is still masked by the patterns
MIN_WEBHOOK_TAIL_CHARS = 8  # "/hook" is no secret; "/services/T0/B0/XXXX" is
# Names whose value is a credential: "password", "access_token", "sentinel_password",
# "api_key", "sign" (DingTalk's signature) ... A false positive only hides a harmless value.
_SECRET_NAME = r"[\w.-]*(?:pass|pwd|token|secret|key|sign|auth|cred)[\w.-]*"
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*):(?P<pw>[^\s/]*)@")
_ASSIGNMENT = re.compile(rf"(?i)(?P<name>\b{_SECRET_NAME})=(?P<value>[^&\s#,;'\"<>)\]]+)")

_SECRET_NAME_RE = re.compile(rf"(?i){_SECRET_NAME}")

_secrets: set[str] = set()


def looks_secret(name: str) -> bool:
    """True for a parameter name whose value is a credential ("token", "app_secret")."""
    return bool(_SECRET_NAME_RE.fullmatch(name))


def register_secret(value: object) -> None:
    """Mask ``value`` wherever it appears from now on (this process and its children)."""
    if isinstance(value, str) and len(value) >= MIN_SECRET_CHARS:
        _secrets.add(value)
        decoded = unquote(value)
        if decoded != value and len(decoded) >= MIN_SECRET_CHARS:
            _secrets.add(decoded)


def register_url_secrets(url: str, *, path_too: bool = False) -> None:
    """Register the password of ``url`` and its secret-looking query values; with
    ``path_too`` also its path and query (a webhook URL's path is its token)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return
    register_secret(password)
    for match in _ASSIGNMENT.finditer(parts.query):
        register_secret(match["value"])
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    if path_too and len(tail) >= MIN_WEBHOOK_TAIL_CHARS:
        register_secret(tail)


def redact(text: str) -> str:
    """``text`` with every password, token and registered secret replaced by ``***``."""
    if not text:
        return text
    for secret in sorted((s for s in _secrets if s in text), key=len, reverse=True):
        text = text.replace(secret, MASK)
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@" if m["pw"] else m[0], text)
    if "=" in text:
        text = _ASSIGNMENT.sub(lambda m: f"{m['name']}={MASK}", text)
    return text


def redact_url(url: str) -> str:
    """A URL as it may be shown: ``redact`` of it (a URL that does not parse is hidden)."""
    try:
        urlsplit(url).port  # noqa: B018 - raises ValueError for a malformed netloc
    except ValueError:
        return "<invalid url>"
    return redact(url)
