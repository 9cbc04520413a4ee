"""Can ssjobs use this Redis, and will it keep the jobs? One short PING (and INFO) for
``start`` (fail at once on a wrong password, warn on an unreachable server), ``check``
(version, eviction policy, persistence) and the master's start-up.

A wrong password, a missing permission or a database that does not exist is *permanent*:
waiting does not help. Anything else (refused, timed out, no route, a Sentinel with no
master yet) is an outage, which ssjobs rides out. Messages never carry the URL: callers
name the server (without its password).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ControlError

if TYPE_CHECKING:
    from .config import Config

PROBE_TIMEOUT_S = 3.0  # a healthy Redis answers PING at once
# ResponseError texts that no amount of waiting fixes (Redis 6+ wording).
PERMANENT_MARKERS = ("WRONGPASS", "NOAUTH", "NOPERM", "invalid password",
                     "invalid username-password", "without any password configured",
                     "DB index is out of range", "invalid DB index")


@dataclass
class Probe:
    ok: bool
    permanent: bool = False      # set for errors waiting cannot fix
    error: str = ""
    version: str = ""
    nodes: list[dict[str, Any]] = field(default_factory=list)  # INFO of each server (details)
    save: str | None = None      # CONFIG GET save, None when the server refuses CONFIG


def probe(url: str, timeout: float = PROBE_TIMEOUT_S, *, details: bool = False) -> Probe:
    """PING the Redis at ``url`` (and read its INFO with ``details``)."""
    import redis
    from redis.exceptions import AuthenticationError, NoPermissionError

    from .broker import connect

    client = None
    try:
        client = connect(url, socket_timeout=timeout, connect_timeout=timeout)
        client.ping()
        found = Probe(True)
        found.nodes = _nodes(client.info() if details else client.info("server"))
        found.version = min((str(n.get("redis_version", "0")) for n in found.nodes),
                            key=_version_key, default="0")
        if details:
            found.save = _save_setting(client)
        return found
    except AuthenticationError as exc:
        text = _text(exc)
        if "HELLO must be called" in text or "NOAUTH" in text:
            text = "the server requires a password and redis.url gives none"
        return Probe(False, True, f"authentication failed: {text}")
    except NoPermissionError as exc:
        return Probe(False, True, f"permission denied: {_text(exc)}")
    except redis.ResponseError as exc:
        text = _text(exc)
        return Probe(False, any(m.lower() in text.lower() for m in PERMANENT_MARKERS), text)
    except Exception as exc:  # noqa: BLE001 - refused, timeout, DNS, cluster/sentinel down
        return Probe(False, False, f"unreachable: {_text(exc)}")
    finally:
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken client may fail too
                pass


def version_tuple(version: str) -> tuple[int, ...]:
    return _version_key(version)


def eviction_policies(found: Probe) -> set[str]:
    """The ``maxmemory-policy`` of each server (``noeviction`` is the only safe one)."""
    return {str(n["maxmemory_policy"]) for n in found.nodes if "maxmemory_policy" in n}


def persistence_off(found: Probe) -> bool:
    """True when some server keeps neither an append-only file nor RDB snapshots (a
    restart then loses every queued job). Unknown (CONFIG refused) counts as on."""
    if found.save is None:
        return False
    return not found.save.strip() and any(str(n.get("aof_enabled", "1")) == "0"
                                          for n in found.nodes)


def _nodes(info: dict) -> list[dict[str, Any]]:
    """A cluster client answers per node: {node: {...}}; a plain one with one dict."""
    if info and all(isinstance(v, dict) for v in info.values()):
        return list(info.values())
    return [info]


def _save_setting(client: Any) -> str | None:
    import redis

    try:
        reply = client.config_get("save")
    except redis.RedisError:
        return None  # managed Redis often refuses CONFIG
    if reply and all(isinstance(v, dict) for v in reply.values()):  # cluster: per node
        reply = next(iter(reply.values()))
    value = reply.get("save", reply.get(b"save")) if reply else None
    return value.decode() if isinstance(value, bytes) else value


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split(".")[:3])


def _text(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def check_at_start(cfg: Config, log: logging.Logger) -> str | None:
    """The master's start: a wrong password or a missing permission fails it at once
    (ControlError); an unreachable Redis is waited for (the workers reconnect), and this
    says why."""
    from .redact import redact_url

    down = None
    for url in dict.fromkeys(cfg.redis_for(job).url for job in cfg.jobs):
        found = probe(url, timeout=2.0)
        if found.permanent:
            raise ControlError(f"redis {redact_url(url)}: {found.error}")
        if not found.ok and down is None:
            down = f"redis {redact_url(url)}: {found.error}"
            log.warning("%s; the workers start once it is reachable", down)
    return down
