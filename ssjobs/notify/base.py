"""The notifier base class and the one HTTP helper every channel posts through."""
from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import urllib.error

from ..errors import NotifyError
from ..urls import http_url_problem

DEFAULT_TIMEOUT_S = 5.0  # a chat webhook answers in well under a second; 5 s rides out a blip
MAX_ANSWER_BYTES = 64 * 1024  # webhook answers are tiny; never buffer a runaway body
MAX_DETAIL_CHARS = 200  # how much of an error answer is quoted in the error message
USER_AGENT = "ssjobs-notifier"


class NotifyHTTPError(NotifyError):
    """Raised when the endpoint answers with an HTTP error status (``status`` holds it)."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"HTTP {status}: {reason}" + (f" ({detail})" if detail else ""))


class NotifyUnreachable(NotifyError):
    """Raised when the endpoint cannot be reached or does not answer within the timeout."""


class NotifyRejected(NotifyError):
    """Raised when the platform answers 200 but refuses the message (nonzero error code)."""

    def __init__(self, platform: str, code: Any, message: str) -> None:
        self.code = code
        super().__init__(f"{platform} refused the message: error {code}: {message}")


def is_retryable(exc: BaseException) -> bool:
    """True for failures worth one more try: unreachable, rate limited, or a 5xx answer."""
    if isinstance(exc, NotifyHTTPError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, NotifyUnreachable)


def redact(url: str) -> str:
    """``scheme://host`` only: webhook paths and queries carry the secret token (and the
    host part goes through :func:`ssjobs.redact.redact` for a password in userinfo)."""
    from ..redact import redact as redact_text

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid url>"
    return redact_text(f"{parts.scheme}://{parts.netloc}")


def check_url(url: str, what: str = "notifier url") -> str:
    """Return ``url`` if it is an http(s) URL with a host, else raise NotifyError (the rule
    is config's, which checks [notifier.params] url before anything starts)."""
    problem = http_url_problem(url)
    if problem:
        raise NotifyError(f"{what} {problem}")
    return str(url)


def clip(text: str, max_bytes: int) -> str:
    """Cut ``text`` to at most ``max_bytes`` of UTF-8, marking the cut."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    marker = "\n…(truncated)"
    keep = max_bytes - len(marker.encode("utf-8"))
    return data[:keep].decode("utf-8", "ignore") + marker


def post_json(url: str, body: Any, *, timeout: float = DEFAULT_TIMEOUT_S,
              headers: dict[str, str] | None = None) -> bytes:
    """POST ``body`` as JSON; return the answer body or raise a :class:`NotifyError`."""
    import http.client  # here, not at the top: every worker imports ssjobs.notify.relay
    import urllib.error
    import urllib.request

    check_url(url)
    request = urllib.request.Request(
        url, data=json.dumps(body, ensure_ascii=False).encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT,
                 **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - http(s) only
            data: bytes = answer.read(MAX_ANSWER_BYTES)
            return data
    except urllib.error.HTTPError as e:
        raise NotifyHTTPError(e.code, str(e.reason), _detail(e)) from e
    except urllib.error.URLError as e:
        raise NotifyUnreachable(f"cannot reach {redact(url)}: {e.reason}") from e
    except TimeoutError as e:
        raise NotifyUnreachable(f"no answer from {redact(url)} within {timeout:g} s") from e
    except (OSError, http.client.HTTPException) as e:
        raise NotifyUnreachable(f"connection to {redact(url)} failed: {e!r}") from e


def _detail(error: urllib.error.HTTPError) -> str:
    """The start of an error answer, when it is short text (Slack's ``invalid_token``)."""
    import http.client
    try:
        text = error.read(MAX_ANSWER_BYTES).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        return ""
    finally:
        error.close()
    if not text or text.startswith("<"):  # an HTML error page says nothing the status doesn't
        return ""
    return " ".join(text.split())[:MAX_DETAIL_CHARS]


def check_code(answer: bytes, platform: str, code_keys: tuple[str, ...],
               message_keys: tuple[str, ...]) -> None:
    """Raise :class:`NotifyRejected` unless the JSON ``answer`` carries a zero error code."""
    try:
        data = json.loads(answer)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not any(k in data for k in code_keys):
        raise NotifyRejected(platform, None, f"unexpected answer {answer[:MAX_DETAIL_CHARS]!r}")
    code = next(data[k] for k in code_keys if k in data)
    if code != 0:
        message = next((data[k] for k in message_keys if k in data), "")
        raise NotifyRejected(platform, code, str(message))


class Notifier:
    """Base of every notifier: ``send`` delivers one message or raises NotifyError."""

    def __init__(self, *, prefix: str = "", timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.prefix = prefix
        self.timeout = timeout

    def title(self, title: str) -> str:
        """The title with the configured prefix ("[prod] ...")."""
        return f"{self.prefix} {title}" if self.prefix else title

    def send(self, title: str, text: str, level: str = "error", **fields: Any) -> None:
        raise NotImplementedError

    def post(self, url: str, body: Any, headers: dict[str, str] | None = None) -> bytes:
        return post_json(url, body, timeout=self.timeout, headers=headers)

