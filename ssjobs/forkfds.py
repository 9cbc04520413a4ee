"""The master's own file descriptors, which a worker it forks must not keep.

A fork copies every descriptor. A worker that keeps the master's listening metrics socket
holds the port after the master closed it, so the master cannot listen again after a
reload; one that keeps the master's Redis connections keeps them open after the master
dropped them. Python opens every fd close-on-exec (PEP 446), which covers exec but not a
plain fork: the master lists them (:func:`redis_fds`, :func:`socket_fds`) and the forked
child closes the list first thing (``worker.run_forked(close_fds=...)``).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any


def close_on_exec(fd: int) -> int:
    """Mark ``fd`` close-on-exec (an fd handed over with ``pass_fds`` is inheritable); a
    bad fd is left for its user to find."""
    try:
        os.set_inheritable(fd, False)
    except OSError:
        pass
    return fd


def socket_fds(*socks: Any) -> list[int]:
    """The fds of open sockets (closed ones, and None, give nothing)."""
    fds = []
    for sock in socks:
        fd = sock.fileno() if sock is not None else -1
        if fd >= 0:
            fds.append(fd)
    return fds


def redis_fds(clients: Iterable[Any]) -> list[int]:
    """The fds of every open connection of these redis-py clients: plain, Sentinel (with
    the Sentinels' own connections) and Cluster (every node's pool). Best effort: redis-py
    keeps connections in pool attributes it does not document; when they move, this finds
    nothing and the worker merely keeps a few idle connections open."""
    fds: list[int] = []
    for client in clients:
        for pool in _pools(client):
            connections = [*getattr(pool, "_available_connections", ()),
                           *getattr(pool, "_in_use_connections", ())]
            for conn in connections:
                fds += socket_fds(getattr(conn, "_sock", None))
    return fds


def _pools(client: Any) -> list[Any]:
    pools = []
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pools.append(pool)
        manager = getattr(pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            pools.append(sentinel.connection_pool)
    nodes = getattr(getattr(client, "nodes_manager", None), "nodes_cache", {})
    for node in list(nodes.values()):
        redis = getattr(node, "redis_connection", None)
        if redis is not None:
            pools.append(redis.connection_pool)
    return pools
