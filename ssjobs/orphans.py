"""Orphan topics: jobs waiting in the ``ready`` list of a topic no master serves.

A typo in a topic name (``mail.sned``), or a producer that writes under another prefix,
makes jobs that wait forever: nothing fails, nothing is logged. A topic is an orphan here
when its ``ready`` list holds jobs, the config does not declare it (for that Redis and
prefix), and no worker of any host is registered for it (``P:{T}:workers`` is empty): a
topic another host's master serves is not an orphan.

``check`` scans every Redis of the config in full (:func:`find`); the master scans
incrementally, one ``SCAN`` step per housekeeping round (:class:`Watch`), so a large
keyspace never holds up its loop; status and the ``orphan_topic`` alert show what it found.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from .broker import TopicKeys, translate
from .errors import BrokerUnavailable

log = logging.getLogger("ssjobs.orphans")

SCAN_COUNT = 1000  # keys per SCAN step: ~1 ms of Redis time, a full pass of 1M keys in ~17 min


def ready_pattern(prefix: str) -> str:
    """SCAN MATCH pattern of every topic's ready list under ``prefix``."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + ":{*}:ready"


def topic_of(key: bytes | str, prefix: str) -> str | None:
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    head, tail = f"{prefix}:{{", "}:ready"
    if text.startswith(head) and text.endswith(tail):
        topic = text[len(head):-len(tail)]
        return topic if topic and "{" not in topic and "}" not in topic else None
    return None


def node_clients(client: Any) -> list[Any]:
    """The plain client of every primary of a Redis Cluster; else the client itself."""
    primaries = getattr(client, "get_primaries", None)
    if primaries is None:
        return [client]
    return [node.redis_connection for node in primaries() if node.redis_connection]


def judge(client: Any, prefix: str, topics: Iterable[str]) -> dict[str, int]:
    """topic -> ready backlog, for those with jobs waiting and no worker registered."""
    out: dict[str, int] = {}
    for topic in sorted(set(topics)):
        keys = TopicKeys(prefix, topic)
        backlog, workers = int(client.llen(keys.ready)), int(client.hlen(keys.workers))
        if backlog and not workers:
            out[topic] = backlog
    return out


def find(client: Any, prefix: str, known: set[str]) -> dict[str, int]:
    """A full pass over the keyspace (for ``check``): the orphan topics and their backlog."""
    found = set()
    for node in node_clients(client):
        for key in node.scan_iter(match=ready_pattern(prefix), count=SCAN_COUNT):
            topic = topic_of(key, prefix)
            if topic is not None and topic not in known:
                found.add(topic)
    return judge(client, prefix, found)


class Watch:
    """The master's incremental scan of one Redis and prefix; ``orphans`` is the outcome of
    the last complete pass (empty until the first one completes)."""

    def __init__(self, client: Any, prefix: str, known: set[str]) -> None:
        self.client, self.prefix, self.known = client, prefix, known
        self.orphans: dict[str, int] = {}
        self._nodes: list[Any] = []
        self._cursor = 0
        self._seen: set[str] = set()
        self.off = False  # the server refuses SCAN (an ACL, a renamed command)

    def step(self) -> None:
        """One SCAN call; after the last one of a pass, judge what it saw. A lost
        connection propagates (the master's housekeeping notes the outage); a server that
        refuses SCAN turns the watch off, with one warning."""
        if self.off:
            return
        try:
            with translate():
                self._step()
        except BrokerUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - NOPERM, unknown command: not our outage
            self.off = True
            log.warning("orphan topics are not watched on this Redis: %s", exc)

    def _step(self) -> None:
        if not self._nodes:
            self._nodes, self._cursor, self._seen = node_clients(self.client), 0, set()
            if not self._nodes:
                return
        cursor, keys = self._nodes[0].scan(self._cursor, match=ready_pattern(self.prefix),
                                           count=SCAN_COUNT)
        for key in keys:
            topic = topic_of(key, self.prefix)
            if topic is not None and topic not in self.known:
                self._seen.add(topic)
        self._cursor = int(cursor)
        if self._cursor == 0:
            self._nodes.pop(0)
            if not self._nodes:
                self.orphans = judge(self.client, self.prefix, self._seen)


def watches(cfg: Any, clients: dict[str, Any]) -> list[Watch]:
    """One Watch per Redis and prefix of the config (``clients``: url -> the master's)."""
    known: dict[tuple[str, str], set[str]] = {}
    for job in cfg.jobs:
        rcfg = cfg.redis_for(job)
        known.setdefault((rcfg.url, rcfg.prefix), set()).add(job.topic)
    return [Watch(clients[url], prefix, topics) for (url, prefix), topics in known.items()
            if url in clients]


def merged(found: Iterable[Watch]) -> dict[str, int]:
    out: dict[str, int] = {}
    for watch in found:
        for topic, backlog in watch.orphans.items():
            out[topic] = out.get(topic, 0) + backlog
    return out
