"""Requeue what gone workers and gone hosts held (at-least-once), and keep this master's own
heartbeat, by which the others judge it alive (docs/design.md, "Crashes" and "Hosts").

Recovery is Redis work: when Redis is down it is queued and retried from housekeeping, so a
worker that dies during an outage loses nothing."""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Iterable, Mapping, Protocol

import redis

from .broker import Broker, node_key, node_of, nodes_key, translate
from .config import JobConfig
from .errors import BrokerUnavailable
from .logs import OutageLogger
from .scoreboard import BatchPosition

log = logging.getLogger("ssjobs.master")

FLUSH_AT_STOP_S = 3.0    # a stopping master rides out this much of an outage to requeue
                         # what its workers held (else the next start or another host does)
HEARTBEAT_EVERY_S = 1.0  # how often a master refreshes its node key (its TTL: heartbeat_ttl)


class _Topic(Protocol):     # what recovery needs of the master's per-topic state
    broker: Broker
    job: JobConfig


class _Pending:
    __slots__ = ("broker", "name", "position", "max_retries", "label")

    def __init__(self, broker: Broker, name: str, position: BatchPosition | None,
                 max_retries: int, label: str) -> None:
        self.broker, self.name, self.position = broker, name, position
        self.max_retries, self.label = max_retries, label


class Recovery:
    def __init__(self, outage: OutageLogger) -> None:
        self.outage = outage
        self.pending: list[_Pending] = []   # recoveries awaiting Redis

    def worker_died(self, broker: Broker, name: str, position: BatchPosition | None,
                    max_retries: int, label: str) -> None:
        """Requeue a gone worker's in-flight jobs: those it finished are dropped, the one it
        was running is charged one attempt (``position``, from its scoreboard slot)."""
        pending = _Pending(broker, name, position, max_retries, label)
        try:
            self._recover(pending)
        except BrokerUnavailable as exc:
            self.outage.note_failure("redis", exc)
            self.pending.append(pending)

    def _recover(self, p: _Pending) -> None:
        requeued, dead, dropped = p.broker.recover(p.name, p.position,
                                                   max_retries=p.max_retries)
        if requeued or dead:
            log.warning("requeued %d in-flight jobs of worker %s (%d it had finished dropped); "
                        "%d dead-lettered as poison", requeued, p.label, dropped, dead)

    def retry_pending(self) -> None:
        """Housekeeping: run queued recoveries; raises a connection error if still down."""
        while self.pending:
            self._recover(self.pending[0])
            self.pending.pop(0)

    def flush(self, timeout: float = FLUSH_AT_STOP_S,
              while_waiting: Callable[[], Any] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            try:
                self.retry_pending()
            except BrokerUnavailable:
                time.sleep(0.5)
                if while_waiting is not None:
                    while_waiting()
        for p in self.pending:
            log.error("could not requeue the in-flight jobs of %s (redis down): the next "
                      "start on this data_dir will, or another master once this host's "
                      "heartbeat expires", p.label)

    def previous_master(self, topics: Mapping[str, _Topic], old_node: str,
                        positions: Mapping[str, tuple[str, BatchPosition]]) -> None:
        """After a SIGKILLed master on this data_dir (its workers have exited by now): every
        worker of that incarnation, from its scoreboard (with its position) or from Redis."""
        for topic, ts in topics.items():
            try:
                names = {n for n in ts.broker.workers() if node_of(n) == old_node}
                names |= {n for n, (t, _) in positions.items() if t == topic}
                for name in sorted(names):
                    position = positions.get(name, ("", None))[1]
                    requeued, dead, dropped = ts.broker.recover(
                        name, position, max_retries=ts.job.max_retries,
                        reason="its master was killed while it ran this job")
                    log.info("recovered %d jobs of %s (previous master; %d finished, %d "
                             "dead-lettered)", requeued, name, dropped, dead)
            except BrokerUnavailable as exc:
                self.outage.note_failure("redis", exc)

    @staticmethod
    def dead_hosts(clients: Iterable[redis.Redis], topics: list[_Topic], prefix: str,
                   own_node: str) -> None:
        """Requeue the in-flight jobs of every node whose heartbeat key has expired (on
        Redis' clock), and forget the node. Recovery fences: should the host be alive, its
        workers' next settle is refused."""
        for client in clients:
            with translate():
                Recovery._dead_hosts_of(client, topics, prefix, own_node)

    @staticmethod
    def _dead_hosts_of(client: redis.Redis, topics: list[_Topic], prefix: str,
                       own_node: str) -> None:
        members: set[bytes] = client.smembers(nodes_key(prefix))  # type: ignore[assignment]
        nodes = sorted(n.decode() for n in members if n.decode() != own_node)
        if not nodes:
            return
        pipe = client.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(node_key(prefix, node))
        dead = {node for node, alive in zip(nodes, pipe.execute(), strict=True) if not alive}
        if not dead:
            return
        for ts in topics:
            if ts.broker.client is not client:
                continue
            for name in ts.broker.workers():
                if node_of(name) in dead:
                    requeued, _, _ = ts.broker.recover(name, None,
                                                       max_retries=ts.job.max_retries)
                    log.warning("host %s is gone (heartbeat expired): requeued %d "
                                "in-flight jobs of %s", node_of(name), requeued, name)
        client.srem(nodes_key(prefix), *dead)


class Heartbeat:
    """This master's liveness in every Redis it uses: ``P:node:NODE`` with a time-to-live of
    heartbeat_ttl, refreshed each second, and NODE in the ``P:nodes`` set. Its value is a
    small JSON summary of the master (for dashboards of other hosts)."""

    def __init__(self, clients: Iterable[redis.Redis], prefix: str, node: str, ttl: float,
                 summary: Callable[[], dict], outage: OutageLogger) -> None:
        self.clients = clients   # the master's live view: a reload may add a Redis
        self.prefix = prefix
        self.node = node
        self.ttl_ms = max(1000, int(ttl * 1000))
        self.summary = summary
        self.outage = outage
        self._last = 0.0
        self._beaten: set[int] = set()   # clients that have seen our key at least once

    def beat(self) -> None:
        self._last = time.monotonic()
        value = json.dumps(self.summary(), separators=(",", ":"))
        for client in self.clients:
            try:
                with translate():
                    pipe = client.pipeline(transaction=False)
                    pipe.set(node_key(self.prefix, self.node), value, px=self.ttl_ms, get=True)
                    pipe.sadd(nodes_key(self.prefix), self.node)
                    previous, _ = pipe.execute()
            except BrokerUnavailable as exc:
                self.outage.note_failure("redis", exc)
                continue
            if previous is None and id(client) in self._beaten:
                log.warning("this host's heartbeat had expired (paused, cut off or too busy "
                            "for heartbeat_ttl): other masters may have requeued its workers' "
                            "jobs; those workers are refused and replaced")
            self._beaten.add(id(client))

    def beat_if_due(self) -> None:
        if time.monotonic() - self._last >= HEARTBEAT_EVERY_S:
            self.beat()

    def end(self) -> None:
        """At a clean stop, after the last worker exited: this node is gone for good."""
        for client in self.clients:
            try:
                with translate():
                    client.delete(node_key(self.prefix, self.node))
                    client.srem(nodes_key(self.prefix), self.node)
            except BrokerUnavailable:
                pass
