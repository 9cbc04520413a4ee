"""What the console commands share: the config's topic, its Redis, one-line errors."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..broker import Broker, connect, translate
from ..config import Config, JobConfig, RedisConfig, load_config
from ..errors import BrokerError, BrokerUnavailable, ControlError

REDIS_TIMEOUT_S = 5.0    # a console command waits this long for Redis before it gives up


def load(cfg_path: str | os.PathLike) -> Config:
    """The full config (a ConfigError is printed by the CLI, one line per problem)."""
    return load_config(cfg_path)


def job_of(cfg: Config, topic: str) -> JobConfig:
    """The job of ``topic``; a topic missing from the config is refused."""
    try:
        return cfg.job(topic)
    except KeyError:
        known = ", ".join(sorted(j.topic for j in cfg.jobs))
        raise ControlError(f"unknown topic {topic!r}: not in {cfg.path} "
                           f"(topics: {known})") from None


def broker_for(cfg: Config, job: JobConfig, *, timeout: float = REDIS_TIMEOUT_S) -> Broker:
    rcfg = cfg.redis_for(job)
    return Broker(connect(rcfg.url, socket_timeout=timeout), rcfg.prefix, job.topic)


@contextmanager
def redis_errors(server: str | RedisConfig) -> Iterator[None]:
    """Turn a Redis failure into one clear line naming the server (without its password);
    for url = "embedded", that its redis-server runs only while the master does."""
    from ..redact import redact, redact_url

    url = server if isinstance(server, str) else server.url
    try:
        with translate():
            yield
    except BrokerError as exc:
        if isinstance(server, RedisConfig) and server.embedded and \
                isinstance(exc, BrokerUnavailable):
            raise BrokerUnavailable(
                f"the embedded redis-server ({url}) does not answer: it runs while the "
                f"master does (`ssjobs start`; `ssjobs status` shows it)") from None
        raise BrokerUnavailable(redact(f"redis {redact_url(url)}: {exc}")) from None


def first_line(text: str, width: int = 0) -> str:
    line = next((part for part in str(text).splitlines() if part.strip()), "").strip()
    if width and len(line) > width:
        return line[:width - 1] + "…"
    return line
