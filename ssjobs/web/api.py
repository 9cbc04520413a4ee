"""The JSON API under /api/ (docs/web.md): what the pages show, as data, and the same
actions as their buttons. Errors are ``{"error": "..."}`` with 400, 401, 403, 404 or 503."""
from __future__ import annotations

import json
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import BrokerUnavailable, ControlError
from .auth import CSRF_HEADER
from .model import DEAD_PAGE
from .pages import MAX_FORM_BYTES, refusal

MAX_DEAD_LIMIT = 500      # dead letters per API call


def routes() -> list[Route]:
    return [
        Route("/api/overview", overview),
        Route("/api/periodic", periodic),
        Route("/api/topics/{topic:path}/dead/retry", retry, methods=["POST"]),
        Route("/api/topics/{topic:path}/dead/purge", purge, methods=["POST"]),
        Route("/api/topics/{topic:path}/dead/{job_id}", dead_letter),
        Route("/api/topics/{topic:path}/dead", dead_letters),
        Route("/api/topics/{topic:path}", topic),
        Route("/api/jobs/{topic:path}/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/api/jobs/{topic:path}/{job_id}", job),
    ]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.response = _error(status, message)


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args)
    except KeyError as exc:
        raise _Refused(404, f"unknown topic {exc.args[0]!r}") from None
    except ControlError as exc:
        raise _Refused(404, str(exc)) from None
    except BrokerUnavailable as exc:
        raise _Refused(503, str(exc)) from None


def _json(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    async def wrapped(request: Request) -> Response:
        try:
            return JSONResponse(await handler(request))
        except _Refused as refused:
            return refused.response
    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _dash(request: Request) -> Any:
    return request.app.state.web.dashboard


def _int(request: Request, name: str, default: int, most: int | None = None) -> int:
    try:
        value = int(request.query_params.get(name, default))
    except ValueError:
        raise _Refused(400, f"{name} must be an integer") from None
    if value < 0 or (most is not None and value > most):
        raise _Refused(400, f"{name} must be between 0 and {most}")
    return value


@_json
async def overview(request: Request) -> Any:
    return await _call(_dash(request).overview)


@_json
async def periodic(request: Request) -> Any:
    return {"periodic": await _call(_dash(request).periodic)}


@_json
async def topic(request: Request) -> Any:
    return await _call(_dash(request).topic, request.path_params["topic"])


@_json
async def dead_letters(request: Request) -> Any:
    start = _int(request, "start", 0)
    limit = _int(request, "limit", DEAD_PAGE, MAX_DEAD_LIMIT)
    return await _call(_dash(request).dead_letters, request.path_params["topic"], start, limit)


@_json
async def dead_letter(request: Request) -> Any:
    dash, name = _dash(request), request.path_params["topic"]
    await _call(dash.job_config, name)
    return await _call(dash.dead_letter, name, request.path_params["job_id"])


@_json
async def job(request: Request) -> Any:
    data = await _call(_dash(request).job, request.path_params["topic"],
                       request.path_params["job_id"])
    if data["record"] is None:
        raise _Refused(404, f"no job {request.path_params['job_id']!r} (unknown, expired, "
                            "or the topic does not track its jobs)")
    return data


# -- actions: a JSON body; the bearer token, or the page's CSRF token in X-CSRF-Token --------

async def _action_body(request: Request) -> dict:
    refused = refusal(request, request.headers.get(CSRF_HEADER))
    if refused:
        raise _Refused(*refused)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise _Refused(400, "body too large")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise _Refused(400, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise _Refused(400, "the body must be a JSON object")
    return data


@_json
async def retry(request: Request) -> Any:
    """Body ``{"ids": [...]}`` requeues those dead jobs; ``{}`` every dead job."""
    body = await _action_body(request)
    ids = body.get("ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str)
                                                                 for i in ids)):
        raise _Refused(400, "ids must be a list of job ids")
    return await _call(_dash(request).retry, request.path_params["topic"], ids or None)


@_json
async def purge(request: Request) -> Any:
    """Body ``{"seen": N}`` deletes the N oldest dead jobs (what a page showed); ``{}`` all."""
    body = await _action_body(request)
    seen = body.get("seen")
    if seen is not None and (not isinstance(seen, int) or isinstance(seen, bool) or seen < 0):
        raise _Refused(400, "seen must be a non-negative integer")
    return {"deleted": await _call(_dash(request).purge, request.path_params["topic"], seen)}


@_json
async def cancel(request: Request) -> Any:
    await _action_body(request)
    found = await _call(_dash(request).cancel, request.path_params["topic"],
                        request.path_params["job_id"])
    if found is None:
        raise _Refused(404, f"no job {request.path_params['job_id']!r}")
    return {"found": found}
