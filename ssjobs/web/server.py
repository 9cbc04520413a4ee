"""``ssjobs web``: the dashboard served by uvicorn (HTTP/1.1 through h11: pure Python, so
the one-file binary carries it without compiled extras), in the foreground until SIGTERM or
Ctrl-C."""
from __future__ import annotations

import logging
import socket
from typing import Any

from ..config import Config
from ..errors import ControlError
from ..urls import is_loopback
from .app import create_app

log = logging.getLogger("ssjobs.web")

KEEP_ALIVE_S = 5           # idle keep-alive connections are closed after this
MAX_CONNECTIONS = 64       # more at once get 503: a dashboard has a handful of viewers
GRACEFUL_STOP_S = 3        # open requests get this long when it is stopped


def check_listen(host: str, token: str) -> None:
    """Refuse a non-loopback address without a token: anyone who reaches it could retry,
    purge and read every payload."""
    if not token and not is_loopback(host):
        raise ControlError(f"refusing to serve the dashboard on {host!r} without a token: "
                           "set [web] token (then every page and API call needs it), or "
                           "listen on 127.0.0.1 behind an authenticating proxy")


def build_server(cfg: Config, host: str, port: int, *, token: str = "", read_only: bool = False,
                 root_path: str = "", sample_every: float | None = None) -> Any:
    """A ``uvicorn.Server`` for the dashboard (not started)."""
    import uvicorn

    check_listen(host, token)
    options: dict[str, Any] = {} if sample_every is None else {"sample_every": sample_every}
    app = create_app(cfg, token=token, read_only=read_only, root_path=root_path, **options)
    config = uvicorn.Config(
        app, host=host.strip("[]"), port=port, http="h11", ws="none", loop="asyncio",
        lifespan="on", log_config=None, access_log=False, server_header=False,
        proxy_headers=True, timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=GRACEFUL_STOP_S)
    return uvicorn.Server(config)


def serve(cfg: Config, host: str, port: int, *, token: str = "", read_only: bool = False,
          root_path: str = "", sock: socket.socket | None = None) -> int:
    """Serve until stopped; exit status 0, or 1 when the address cannot be bound."""
    server = build_server(cfg, host, port, token=token, read_only=read_only,
                          root_path=root_path)
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    log.info("dashboard on http://%s:%d%s/ (%s%s)", shown, port, root_path.rstrip("/"),
             "token required" if token else "no token: loopback only",
             ", read-only" if read_only else "")
    server.run(sockets=[sock] if sock is not None else None)
    if not server.started:
        raise ControlError(f"cannot serve the dashboard on {shown}:{port} (see the log above)")
    return 0
