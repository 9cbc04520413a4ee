"""The ASGI application: Starlette routes (pages in :mod:`.pages`, JSON in :mod:`.api`),
wrapped in :class:`Gate`, which serves ``root_path``, authenticates every request, issues the
session cookie and adds the security headers.

Page URLs and JSON endpoints are listed in docs/web.md.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Config
from . import api, pages
from .auth import COOKIE, Guard, session_cookie
from .model import SAMPLE_EVERY_S, Dashboard
from .views import assets, environment

log = logging.getLogger("ssjobs.web")

OPEN_PATHS = ("/login", "/healthz")     # served without the token (and /static/...)
# No inline script or style, nothing from another origin, never framed.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin")]


@dataclass
class Web:
    """What every handler needs (``request.app.state.web``)."""
    dashboard: Dashboard
    guard: Guard
    root_path: str = ""
    read_only: bool = False
    env: Any = None
    failed_logins: asyncio.Lock = field(default_factory=asyncio.Lock)

    def url(self, path: str) -> str:
        return self.root_path + path


def create_app(cfg: Config, *, token: str = "", read_only: bool = False, root_path: str = "",
               sample_every: float = SAMPLE_EVERY_S) -> ASGIApp:
    """The dashboard of ``cfg``'s topics (``root_path`` like "/ssjobs", or "")."""
    root_path = "/" + root_path.strip("/") if root_path.strip("/") else ""
    web = Web(Dashboard(cfg, read_only=read_only), Guard(token), root_path, read_only,
              environment(root_path))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sampler = asyncio.create_task(_sample(web.dashboard, sample_every))
        try:
            yield
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            web.dashboard.close()

    app = Starlette(routes=[*pages.routes(), *api.routes(),
                            Route("/static/{name}", static, methods=["GET", "HEAD"]),
                            Route("/healthz", healthz, methods=["GET", "HEAD"])],
                    lifespan=lifespan)
    app.state.web = web
    return Gate(app, web)


async def _sample(dashboard: Dashboard, every: float) -> None:
    """Refresh the overview every ``every`` seconds (rates and sparklines need samples even
    while no page is open)."""
    from starlette.concurrency import run_in_threadpool

    while True:
        try:
            await run_in_threadpool(dashboard.refresh)
        except Exception:  # noqa: BLE001 - the sampler must outlive any one failure
            log.exception("dashboard refresh failed")
        await asyncio.sleep(every)


async def static(request: Request) -> Response:
    asset = assets().get(request.path_params["name"])
    if asset is None:
        return Response("not found", status_code=404, media_type="text/plain")
    headers = {"etag": f'"{asset.etag}"', "cache-control": "public, max-age=86400"}
    if request.headers.get("if-none-match") == f'"{asset.etag}"':
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


async def healthz(request: Request) -> Response:
    return Response("ok\n", media_type="text/plain")


class Gate:
    """ASGI middleware: root_path, authentication, the session cookie, security headers.

    - ``root_path``: a reverse proxy may forward ``/ssjobs/topics/x`` as it is or with the
      prefix stripped; both are served, and every link the pages make carries the prefix.
    - With a token: a request without ``Authorization: Bearer <token>`` or a valid session
      cookie gets 401 (JSON, under /api/) or a redirect to the login form (pages).
    - Without a token: every page sets an anonymous session cookie, so forms carry a CSRF
      token tied to it (a page on another site cannot read it, and SameSite=Strict keeps
      the cookie off cross-site requests).
    """

    def __init__(self, app: ASGIApp, web: Web) -> None:
        self.app = app
        self.web = web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        web, guard = self.web, self.web.guard
        scope["root_path"] = web.root_path
        request = Request(scope)
        path = _route_path(scope, web.root_path)
        bearer = guard.bearer_ok(request.headers.get("authorization"))
        session = guard.session(request.cookies.get(COOKIE))
        open_path = path in OPEN_PATHS or path.startswith("/static/")
        new_cookie = None
        if session is None and not guard.needs_login and not open_path:
            new_cookie = guard.new_cookie()
            session = guard.session(new_cookie)
        state = scope.setdefault("state", {})
        state.update(session=session, bearer=bearer)
        if guard.needs_login and not (bearer or session or open_path):
            await self._refuse(scope, path)(scope, receive, send)
            return
        secure = request.url.scheme == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if not path.startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                if new_cookie is not None:
                    headers.append((b"set-cookie",
                                    session_cookie(new_cookie, web.root_path, secure).encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refuse(self, scope: Scope, path: str) -> Response:
        if path.startswith("/api/") or scope["method"] not in ("GET", "HEAD"):
            return JSONResponse({"error": "unauthorized: log in, or send "
                                          "Authorization: Bearer <token>"}, status_code=401,
                                headers={"www-authenticate": 'Bearer realm="ssjobs"'})
        target = path + ("?" + scope["query_string"].decode() if scope["query_string"] else "")
        return RedirectResponse(self.web.url("/login?next=" + quote(target, safe="")),
                                status_code=303)


def _route_path(scope: Scope, root_path: str) -> str:
    path: str = scope["path"]
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        return path[len(root_path):] or "/"
    return path
