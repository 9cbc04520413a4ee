"""Who may see the dashboard and who may act: the token, the session cookie, CSRF tokens.

- With a ``token`` set, every request needs it: ``Authorization: Bearer <token>`` (scripts),
  or the session cookie the login form sets (browsers). Without one, the server only listens
  on a loopback address (:func:`ssjobs.web.server.check_listen`).
- The session cookie is ``NONCE.EXPIRES.MAC``: stateless, HttpOnly, SameSite=Strict, Secure
  over https. Its MAC key is derived from the token, so changing the token logs every
  browser out; without a token the cookie only anchors the CSRF token, under a key that
  lives as long as the process.
- Every POST a browser sends carries a CSRF token (a form field, or the ``X-CSRF-Token``
  header): an HMAC of the session's nonce. A request authenticated by its bearer token needs
  none (no browser sends that header by itself).

Tokens and MACs are compared in constant time.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any, NamedTuple

COOKIE = "ssjobs_session"
CSRF_FIELD = "csrf"                  # form field
CSRF_HEADER = "x-csrf-token"         # or this header (fetch)
SESSION_MAX_AGE_S = 7 * 86400        # an on-call engineer's phone stays logged in a week
_KEY_LABEL = b"ssjobs web session v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Session(NamedTuple):
    """A valid cookie's session: with a token, a logged-in browser."""
    nonce: str


class Guard:
    def __init__(self, token: str = "") -> None:
        self.token = token
        self._key = (hmac.new(token.encode(), _KEY_LABEL, hashlib.sha256).digest() if token
                     else secrets.token_bytes(32))

    @property
    def needs_login(self) -> bool:
        return bool(self.token)

    def _mac(self, *parts: str) -> str:
        msg = "\0".join(parts).encode()
        return _b64(hmac.new(self._key, msg, hashlib.sha256).digest())

    # -- the token ----------------------------------------------------------------------
    def token_ok(self, given: str) -> bool:
        return bool(self.token) and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer_ok(self, authorization: str | None) -> bool:
        """True for ``Authorization: Bearer <the token>``."""
        if not self.token or not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(value.strip())

    # -- the session cookie -------------------------------------------------------------
    def new_cookie(self, now: float | None = None) -> str:
        expires = str(int((time.time() if now is None else now) + SESSION_MAX_AGE_S))
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{expires}.{self._mac('session', nonce, expires)}"

    def session(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a valid, unexpired cookie names; None otherwise."""
        if not cookie or cookie.count(".") != 2:
            return None
        nonce, expires, mac = cookie.split(".")
        if not hmac.compare_digest(mac.encode(), self._mac("session", nonce, expires).encode()):
            return None
        if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
            return None
        return Session(nonce)

    # -- CSRF ---------------------------------------------------------------------------
    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.nonce)

    def csrf_ok(self, session: Session | None, given: str | None) -> bool:
        if session is None or not given:
            return False
        return hmac.compare_digest(given.encode(), self.csrf_token(session).encode())


# -- what the gate found, and the cookie it sets --------------------------------------------

def session_cookie(value: str, root_path: str, secure: bool, *, clear: bool = False) -> str:
    """The Set-Cookie value of the session cookie (HttpOnly, SameSite=Strict)."""
    parts = [f"{COOKIE}={'' if clear else value}", f"Path={root_path or '/'}", "HttpOnly",
             "SameSite=Strict", f"Max-Age={0 if clear else SESSION_MAX_AGE_S}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def session_of(request: Any) -> Session | None:
    """The session the gate found for this request (ssjobs.web.app.Gate)."""
    return request.scope.get("state", {}).get("session")


def by_bearer(request: Any) -> bool:
    """True when the request carried the bearer token."""
    return bool(request.scope.get("state", {}).get("bearer"))
