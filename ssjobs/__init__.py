"""ssjobs: background jobs on Linux servers, driven by Redis."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import JobTimeout, Reject, Retry, SsjobsError

if TYPE_CHECKING:
    from .envelope import Job

__version__ = "0.1.0"
__all__ = ["Job", "JobTimeout", "Reject", "Retry", "SsjobsError", "__version__"]


def __getattr__(name: str) -> Any:
    # ``ssjobs.Job`` on first use: importing the package must not import msgpack (or any
    # other third-party module) before an entry point has made sys.path safe (ssjobs.syspath).
    if name == "Job":
        from .envelope import Job

        return Job
    raise AttributeError(f"module 'ssjobs' has no attribute {name!r}")
