"""Parsing and checking the addresses a config names: Redis URLs (plain, TLS, unix,
Cluster, Sentinel), "host:port" listen addresses, http(s) URLs of notifiers. One parser per
kind, used both to validate the config and to connect. Messages never echo a whole URL: it
may carry a password.

Layer 0: imports nothing from ssjobs."""
from __future__ import annotations

import json
import re
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SENTINEL_PORT = 26379


def show(value: str) -> str:
    """A value quoted for an error message, cut to 60 characters."""
    return json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)


class SentinelURL(NamedTuple):
    hosts: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse_sentinel(url: str) -> SentinelURL:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``;
    ValueError saying what is wrong (without the password)."""
    parts = urlsplit(url)
    hosts = []
    for host in parts.netloc.rpartition("@")[2].split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        if not name or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError('needs sentinel host:port pairs, e.g. '
                             '"redis+sentinel://10.0.0.1:26379/mymaster"')
        hosts.append((name, int(port) if port else SENTINEL_PORT))
    service, _, db = parts.path.strip("/").partition("/")
    if not service:
        raise ValueError('needs the service name, e.g. '
                         '"redis+sentinel://10.0.0.1:26379/mymaster"')
    db = db.strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError("database must be a number")
    return SentinelURL(hosts, service, int(db or 0),
                       unquote(parts.username) if parts.username else None,
                       unquote(parts.password) if parts.password else None,
                       url.startswith("rediss"))


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL ssjobs can use (None when it is)."""
    if url.startswith(SENTINEL_SCHEMES):
        try:
            parse_sentinel(url)
        except ValueError as exc:
            return str(exc)
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"is not a valid URL ({e})"
    if parts.scheme == "unix":
        return None if parts.path else 'needs a socket path, e.g. "unix:///run/redis.sock"'
    if parts.scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        return "must start with redis://, rediss://, unix://, redis+cluster:// or redis+sentinel://"
    if not parts.hostname or port == 0:
        return 'needs a host (and port 1..65535), e.g. "redis://127.0.0.1:6379/0"'
    db = parts.path.strip("/")
    return None if not db or (db.isascii() and db.isdigit()) else "database must be a number"


def is_loopback(host: str) -> bool:
    """True for "localhost" and literal loopback addresses (a name is not resolved)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def http_url_problem(v: Any) -> str | None:
    """Why ``v`` is not an http(s) URL with a host (None when it is). The message shows only
    scheme and host: a webhook's path or query carries its secret token."""
    parts = urlsplit(str(v))
    if parts.scheme in ("http", "https") and parts.netloc:
        return None
    return f"must be an http:// or https:// URL, got {show(f'{parts.scheme}://{parts.netloc}')}"


def listen_problem(v: str) -> str | None:
    """Why ``v`` is not a "host:port" to listen on (None when it is)."""
    host, _, port = v.rpartition(":")
    if not re.fullmatch(r"[^\s\[\]:]+|\[[0-9A-Fa-f:.]+\]", host):
        return f'must be "host:port" (e.g. "127.0.0.1:9108"), got {show(v)}'
    if port.isascii() and port.isdigit() and 1 <= int(port) <= 65535:
        return None
    return f"port must be between 1 and 65535, got {show(port)}"


def split_listen(v: str) -> tuple[str, int]:
    """``(host, port)`` of a checked listen address; an IPv6 host loses its brackets."""
    host, _, port = v.rpartition(":")
    return host.strip("[]"), int(port)
