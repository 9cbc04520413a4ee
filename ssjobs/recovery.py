"""Requeue what dead workers and dead hosts held (SPEC §6, at-least-once).

The master calls these; each one is Redis work, queued when Redis is down and retried
from housekeeping, so a worker that dies during an outage loses nothing."""
from __future__ import annotations

import logging
import time
from typing import Iterable, Protocol

from .broker import CONNECTION_ERRORS, Broker, nodes_key
from .config import JobConfig
from .logs import OutageLogger

log = logging.getLogger("ssjobs.master")

FLUSH_AT_STOP_S = 10.0   # a stopping master keeps retrying queued recoveries this long


class _Topic(Protocol):     # what recovery needs of the master's per-topic state
    broker: Broker
    job: JobConfig


class Recovery:
    def __init__(self, outage: OutageLogger) -> None:
        self.outage = outage
        # (broker, worker name, charged job id, max_retries, label) awaiting Redis
        self.pending: list[tuple[Broker, str, str, int, str]] = []

    def worker_died(self, broker: Broker, name: str, charged: str, max_retries: int,
                    label: str) -> None:
        """Requeue a dead worker's in-flight jobs, charging ``charged`` one attempt."""
        try:
            self._recover(broker, name, charged, max_retries, label)
        except CONNECTION_ERRORS as exc:
            self.outage.note_failure("redis", exc)
            self.pending.append((broker, name, charged, max_retries, label))

    def _recover(self, broker: Broker, name: str, charged: str, max_retries: int,
                 label: str) -> None:
        requeued, dead = broker.recover(name, charged_id=charged, max_retries=max_retries)
        if requeued or dead:
            log.warning("requeued %d in-flight jobs of worker %s; %d dead-lettered as poison",
                        requeued, label, dead)

    def retry_pending(self) -> None:
        """Housekeeping: run queued recoveries; raises a connection error if still down."""
        while self.pending:
            self._recover(*self.pending[0])
            self.pending.pop(0)

    def flush(self, timeout: float = FLUSH_AT_STOP_S) -> None:
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            try:
                self.retry_pending()
            except CONNECTION_ERRORS:
                time.sleep(0.5)
        for _, name, *_ in self.pending:
            log.error("could not requeue the in-flight jobs of %s (redis down); another "
                      "master will after heartbeat_ttl", name)

    def previous_master(self, topics: Iterable[_Topic], old_node: str) -> None:
        """After a SIGKILLed master on this host (its workers have exited by now)."""
        for ts in topics:
            try:
                for name, node in ts.broker.workers().items():
                    if node == old_node:
                        requeued, _ = ts.broker.recover(name, max_retries=ts.job.max_retries)
                        log.info("recovered %d jobs of %s (previous master)", requeued, name)
            except CONNECTION_ERRORS as exc:
                self.outage.note_failure("redis", exc)

    @staticmethod
    def dead_hosts(clients: Iterable, topics: list[_Topic], prefix: str, ttl: float,
                   own_node: str, now: float) -> None:
        """Requeue the in-flight jobs of every master whose heartbeat expired."""
        key = nodes_key(prefix)
        for client in clients:
            dead_nodes = {n.decode() for n in client.zrangebyscore(key, "-inf", now - ttl)}
            dead_nodes.discard(own_node)
            if not dead_nodes:
                continue
            for ts in topics:
                if ts.broker.client is not client:
                    continue
                for name, node in ts.broker.workers().items():
                    if node in dead_nodes:
                        requeued, _ = ts.broker.recover(name, max_retries=ts.job.max_retries)
                        log.warning("host %s is gone: requeued %d in-flight jobs of %s",
                                    node, requeued, name)
            client.zrem(key, *dead_nodes)
