"""The HTML pages and the form actions behind their buttons (docs/web.md lists them)."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import BrokerUnavailable, ControlError
from ..tracking import STATES
from .auth import CSRF_FIELD, by_bearer, session_cookie, session_of
from .views import url_part

MAX_FORM_BYTES = 64 * 1024     # a form of ours is a few ids; anything bigger is refused
LOGIN_FAILURE_DELAY_S = 1.0    # failed logins are answered one at a time, this slowly


def routes() -> list[Route]:
    return [
        Route("/", overview),
        Route("/topics/{topic:path}/dead/retry", retry, methods=["POST"]),
        Route("/topics/{topic:path}/dead/purge", purge, methods=["POST"]),
        Route("/topics/{topic:path}/dead/{job_id}", dead_letter),
        Route("/topics/{topic:path}", topic),
        Route("/jobs", job_lookup),
        Route("/jobs/{topic:path}/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/jobs/{topic:path}/{job_id}", job),
        Route("/periodic", periodic),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


def _web(request: Request) -> Any:
    return request.app.state.web


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    web = _web(request)
    session = session_of(request)
    html = web.env.get_template(template).render(
        csrf=web.guard.csrf_token(session) if session else "", read_only=web.read_only,
        needs_login=web.guard.needs_login, clock=time.strftime("%H:%M:%S"), **context)
    return HTMLResponse(html, status_code=status_code)


def error_page(request: Request, status_code: int, message: str) -> Response:
    return render(request, "error.html", status_code, title=f"Error {status_code}",
                  message=message, code=status_code)


async def _call(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a thread (it talks to Redis); failures become error pages, raised as
    :class:`_Failed`."""
    try:
        return await run_in_threadpool(fn, *args)
    except KeyError as exc:
        raise _Failed(error_page(request, 404, f"unknown topic {exc.args[0]!r}: "
                                               "not in this dashboard's config")) from None
    except ControlError as exc:
        raise _Failed(error_page(request, 404, str(exc))) from None
    except BrokerUnavailable as exc:
        raise _Failed(error_page(request, 503, str(exc))) from None


class _Failed(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _handled(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except _Failed as failed:
            return failed.response
    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _int(value: str | None, default: int = 0) -> int:
    try:
        return max(0, int(value or default))
    except ValueError:
        return default


# -- pages -----------------------------------------------------------------------------------

@_handled
async def overview(request: Request) -> Response:
    data = await _call(request, _web(request).dashboard.overview)
    return render(request, "overview.html", title="Overview", nav="overview", live=True,
                  data=data)


@_handled
async def topic(request: Request) -> Response:
    dash = _web(request).dashboard
    name = request.path_params["topic"]
    start = _int(request.query_params.get("start"))
    data = await _call(request, dash.topic, name)
    dead = await _call(request, dash.dead_letters, name, start)
    return render(request, "topic.html", title=name, nav="topic", live=True, data=data,
                  dead=dead, flash=_flash(request))


@_handled
async def dead_letter(request: Request) -> Response:
    dash = _web(request).dashboard
    name, job_id = request.path_params["topic"], request.path_params["job_id"]
    await _call(request, dash.job_config, name)
    entry = await _call(request, dash.dead_letter, name, job_id)
    return render(request, "dead.html", title=f"dead job {job_id}", nav="topic", topic=name,
                  entry=entry)


async def job_lookup(request: Request) -> Response:
    name = request.query_params.get("topic", "").strip()
    job_id = request.query_params.get("id", "").strip()
    web = _web(request)
    if name and job_id:
        return RedirectResponse(web.url(f"/jobs/{url_part(name)}/{url_part(job_id)}"), 303)
    return render(request, "job.html", title="Find a job", nav="jobs", data=None,
                  topics=[j.topic for j in web.dashboard.cfg.jobs], flash=None)


@_handled
async def job(request: Request) -> Response:
    dash = _web(request).dashboard
    name, job_id = request.path_params["topic"], request.path_params["job_id"]
    data = await _call(request, dash.job, name, job_id)
    return render(request, "job.html", title=f"job {job_id}", nav="jobs", data=data, live=True,
                  topics=[j.topic for j in dash.cfg.jobs], flash=_flash(request),
                  status_code=200 if data["record"] else 404)


@_handled
async def periodic(request: Request) -> Response:
    dash = _web(request).dashboard
    schedules = await _call(request, dash.periodic)
    return render(request, "periodic.html", title="Periodic jobs", nav="periodic",
                  schedules=schedules, at=dash.overview()["at"])


# -- actions ---------------------------------------------------------------------------------

async def read_form(request: Request) -> dict[str, list[str]] | None:
    """The url-encoded body (None when it is not one, or too big)."""
    if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


def refusal(request: Request, csrf: str | None, *, action: bool = True
            ) -> tuple[int, str] | None:
    """Why this POST may not go on: (status, message), or None. A bearer-authenticated call
    needs no CSRF token; a browser's needs the one its page was given. An ``action``
    (retry, purge, cancel) is refused in read-only mode too."""
    web = _web(request)
    if not by_bearer(request) and not web.guard.csrf_ok(session_of(request), csrf):
        return 403, "missing or invalid CSRF token: reload the page and try again"
    if action and web.read_only:
        return 403, "this dashboard is read-only ([web] read_only = true): no actions"
    return None


async def _form_action(request: Request, *, action: bool = True) -> dict[str, list[str]]:
    form = await read_form(request)
    if form is None:
        raise _Failed(error_page(request, 400, "expected a form (url-encoded, at most 64 KB)"))
    refused = refusal(request, (form.get(CSRF_FIELD) or [""])[0], action=action)
    if refused:
        raise _Failed(error_page(request, *refused))
    return form


def _back(request: Request, path: str, **flash: Any) -> Response:
    query = "?" + urlencode(flash) if flash else ""
    return RedirectResponse(_web(request).url(path) + query, status_code=303)


@_handled
async def retry(request: Request) -> Response:
    form = await _form_action(request)
    name = request.path_params["topic"]
    ids = [i for i in form.get("id", []) if i]
    try:
        done = await _call(request, _web(request).dashboard.retry, name, ids)
    except _Failed as failed:
        if failed.response.status_code != 404 or not ids:
            raise
        return _back(request, f"/topics/{url_part(name)}", done="missing")
    return _back(request, f"/topics/{url_part(name)}", done="retried", n=done["requeued"],
                 gone=done["gone"], skipped=done["skipped"])


@_handled
async def purge(request: Request) -> Response:
    form = await _form_action(request)
    name = request.path_params["topic"]
    seen = form.get("seen")
    deleted = await _call(request, _web(request).dashboard.purge, name,
                          _int(seen[0]) if seen else None)
    return _back(request, f"/topics/{url_part(name)}", done="purged", n=deleted)


@_handled
async def cancel(request: Request) -> Response:
    await _form_action(request)
    name, job_id = request.path_params["topic"], request.path_params["job_id"]
    found = await _call(request, _web(request).dashboard.cancel, name, job_id)
    return _back(request, f"/jobs/{url_part(name)}/{url_part(job_id)}", done="cancelled",
                 found=found if found in STATES else "unknown")


def _flash(request: Request) -> str | None:
    """The line an action's redirect asks for (made here from numbers: never echoed)."""
    q = request.query_params
    done, n = q.get("done"), _int(q.get("n"))
    if done == "retried":
        line = f"Requeued {n} job{'s' if n != 1 else ''}."
        if _int(q.get("gone")):
            line += f" {_int(q.get('gone'))} already gone (retried or purged meanwhile)."
        if _int(q.get("skipped")):
            line += f" Skipped {_int(q.get('skipped'))} malformed (not a job envelope)."
        return line
    if done == "purged":
        return f"Deleted {n} dead job{'s' if n != 1 else ''}."
    if done == "missing":
        return "That job is no longer in the dead letters (retried or purged meanwhile)."
    if done == "cancelled":
        found = q.get("found")
        if found not in STATES:
            return "No such job (unknown, or its record expired)."
        return {"queued": "Cancelled: it was queued and will never run.",
                "delayed": "Cancelled: it was delayed and will never run.",
                "running": "It is running: the consumer was asked to stop (job.cancelled)."
                }.get(found, f"Nothing to cancel: the job had already finished ({found}).")
    return None


# -- login -----------------------------------------------------------------------------------

def _safe_next(value: str | None) -> str:
    """Where to go after logging in: a path of this dashboard, never another site."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    return value


async def login(request: Request) -> Response:
    web = _web(request)
    if not web.guard.needs_login:
        return RedirectResponse(web.url("/"), status_code=303)
    if request.method == "GET":
        return render(request, "login.html", title="Log in", nav="",
                      next=_safe_next(request.query_params.get("next")), failed=False)
    form = await read_form(request) or {}
    target = _safe_next((form.get("next") or ["/"])[0])
    if web.guard.token_ok((form.get("token") or [""])[0].strip()):
        response = RedirectResponse(web.url(target), status_code=303)
        response.headers.append("set-cookie", session_cookie(
            web.guard.new_cookie(), web.root_path, request.url.scheme == "https"))
        return response
    async with web.failed_logins:         # one failed attempt per second, whoever asks
        await asyncio.sleep(LOGIN_FAILURE_DELAY_S)
    return render(request, "login.html", 401, title="Log in", nav="", next=target, failed=True)


@_handled
async def logout(request: Request) -> Response:
    await _form_action(request, action=False)      # logging out works when read-only too
    web = _web(request)
    response = RedirectResponse(web.url("/login" if web.guard.needs_login else "/"), 303)
    response.headers.append("set-cookie", session_cookie("", web.root_path,
                                                         request.url.scheme == "https",
                                                         clear=True))
    return response
