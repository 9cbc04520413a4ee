"""``ssjobs web``: the dashboard served by uvicorn (HTTP/1.1 through h11: pure Python, so
the one-file binary carries it without compiled extras), in the foreground until SIGTERM or
Ctrl-C. Logs go to stderr (docker, systemd's journal)."""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
from typing import Any

from ..config import Config, WebConfig
from ..errors import ControlError
from ..runtime import StopSignals
from ..urls import listen_problem

log = logging.getLogger("ssjobs.web")

KEEP_ALIVE_S = 5           # idle keep-alive connections are closed after this
MAX_CONNECTIONS = 64       # more at once get 503: a dashboard has a handful of viewers
GRACEFUL_STOP_S = 3        # open requests get this long when it is stopped


def settings(cfg: Config, listen: str | None = None) -> WebConfig:
    """``[web]`` (defaults when absent), with ``--listen`` instead of its listen; refused
    (ControlError) when it would serve a non-loopback address without a token."""
    web = cfg.web or WebConfig()
    if listen is not None:
        problem = listen_problem(listen)
        if problem:
            raise ControlError(f"--listen {problem}")
        web = dataclasses.replace(web, listen=listen)
    check_listen(web)
    return web


def check_listen(web: WebConfig) -> None:
    """Refuse a non-loopback address without a token (the rule is WebConfig's)."""
    for key, message in web.cross_check():
        raise ControlError(f"web.{key}: {message}")


def build_server(cfg: Config, web: WebConfig, *, sample_every: float | None = None) -> Any:
    """A ``uvicorn.Server`` for the dashboard of ``cfg`` with ``web``'s settings (not
    started); ControlError for an address it must not serve."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise ControlError(f"the dashboard needs the web extra ({exc.name} is missing): "
                           "pip install 'ssjobs[web]'") from None
    check_listen(web)
    host, port = web.address
    options: dict[str, Any] = {} if sample_every is None else {"sample_every": sample_every}
    app = create_app(cfg, token=web.token, read_only=web.read_only, root_path=web.root_path,
                     **options)
    config = uvicorn.Config(
        app, host=host, port=port, http="h11", ws="none", loop="asyncio", lifespan="on",
        log_config=None, access_log=False, server_header=False, proxy_headers=True,
        timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=GRACEFUL_STOP_S)
    return uvicorn.Server(config)


def serve(cfg: Config, web: WebConfig, *, sock: socket.socket | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C; exit status 0 (ControlError when it cannot listen)."""
    server = build_server(cfg, web)
    where = f"http://{web.listen}{web.root_path.rstrip('/')}/"
    log.info("dashboard on %s (pid %d; %s%s)", where, os.getpid(),
             "token required" if web.token else "no token: loopback only",
             ", read-only" if web.read_only else "")
    # uvicorn handles SIGTERM and SIGINT while it serves, then raises the signal again under
    # the handlers it found: these record it, so a stop asked for is an exit status 0.
    with StopSignals():
        server.run(sockets=[sock] if sock is not None else None)
    if not server.started:
        raise ControlError(f"cannot serve the dashboard on {web.listen} (see the line above)")
    return 0


def run(cfg_path: str | os.PathLike, *, listen: str | None = None) -> int:
    """``ssjobs web -c CONFIG [--listen HOST:PORT]``."""
    from ..console.common import load
    from ..logs import setup_logging

    cfg = load(cfg_path)
    web = settings(cfg, listen)
    setup_logging(None, level=cfg.log.level, fmt=cfg.log.format, role="web")
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    return serve(cfg, web)
