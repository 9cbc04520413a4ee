"""What the master asks of an extension (metrics, the notifier with its alerts): built
with the master, then called from the master's loop. None may block or raise out: the
master logs a failing call and goes on (gunicorn's server hooks are the model).

Layer: below ``master`` and above its extensions, which implement this protocol."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from .config import Config
    from .master import Master


class Extension(Protocol):
    def start(self, master: Master) -> None:
        """Once, before the master reports ready (and again after each reload); raise
        ExtensionUnavailable to be left off, with one ERROR line and status saying so."""

    def tick(self, master: Master, now: float) -> None:
        """Once a second from the master's loop; must not block."""

    def fds(self) -> list[int]:
        """Descriptors of its own (sockets, connections) that forked workers must close."""

    def worker_exited(self, master: Master, slot: int, info: dict) -> None:
        """A worker's last scoreboard slot, read before the slot is reused."""

    def reloaded(self, master: Master, refused: dict[str, str]) -> None:
        """After a reload started it again: the topics refused, and why."""

    def stop(self, master: Master) -> None:
        """Before a reload or the master's exit."""


def extension_factories(cfg: Config) -> list[tuple[str, Callable[[Master], Extension]]]:
    """(name, factory) of the master extensions for this config. The notifier starts first,
    so that an ERROR the others log while starting reaches it. Each is imported only when
    configured: its dependencies (prometheus-client, HTTP) stay out of a master without it."""
    factories: list[tuple[str, Callable[[Master], Extension]]] = []
    if cfg.notifier is not None:
        from .alerts import AlertsExtension
        factories.append(("notifier", AlertsExtension))
    if cfg.metrics is not None:
        from .metrics import MetricsExtension
        factories.append(("metrics", MetricsExtension))
    return factories
