"""One exception tree for ssjobs, rooted at :class:`SsjobsError`."""
from __future__ import annotations

from .delays import retry_delay


class SsjobsError(Exception):
    """Raised for any ssjobs failure; the root of every ssjobs exception."""


class ConfigError(SsjobsError):
    """Raised when a config file is missing, unreadable or invalid.

    ``errors`` holds every problem found, one line each (``key.path (line N): message``).
    """

    def __init__(self, errors: list[str] | str, path: str | None = None) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(self.errors))


class EnvelopeError(SsjobsError):
    """Raised when bytes taken from Redis are not a valid job envelope."""


class BrokerError(SsjobsError):
    """Raised when Redis refuses a command (an error reply that waiting will not cure)."""


class BrokerUnavailable(BrokerError):
    """Raised when Redis cannot serve now: unreachable, timed out, loading, failing over,
    out of memory, a read-only replica. Callers wait it out."""


class Fenced(SsjobsError):
    """Raised when Redis refuses a worker's settle: the worker was recovered (its host was
    presumed dead) or names a batch Redis does not know, so it must stop touching its
    in-flight list (docs/design.md, "Hosts")."""


class ConsumerImportError(SsjobsError):
    """Raised when a consumer spec cannot be imported or is not callable."""


class UnsafePathError(SsjobsError):
    """Raised when a file or directory ssjobs would use is a link, or could be changed by a
    user other than root and the service user (``process.user``)."""


class ControlError(SsjobsError):
    """Raised when the console cannot act on a master (not running, no permission, timeout)."""


class ExtensionUnavailable(SsjobsError):
    """Raised when a master extension (metrics, notifier) cannot start; the master runs on
    without it."""


class NotifyError(SsjobsError):
    """Raised when a notifier fails to deliver a message (only to `check --notify`)."""


class Retry(Exception):
    """Raised by a consumer to retry the current job, optionally after ``delay`` seconds
    (0 .. a year; NaN or a non-number raises ValueError). Outside the SsjobsError tree: it is
    the consumer's way to say what to do with its job, not a failure of ssjobs."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        self.delay = None if delay is None else retry_delay(delay)
        self.reason = reason
        super().__init__(reason or (f"retry in {delay}s" if delay is not None else "retry"))


class Reject(Exception):
    """Raised by a consumer to dead-letter the current job at once, without retrying
    (outside the SsjobsError tree, like Retry)."""


class JobTimeout(BaseException):
    """Raised inside a consumer whose job ran past ``job_timeout`` (BaseException so that
    a consumer's ``except Exception`` cannot swallow it)."""
