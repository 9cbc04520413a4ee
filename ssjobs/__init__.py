"""ssjobs: background jobs on Linux servers, driven by Redis."""
from __future__ import annotations

from .envelope import Job
from .errors import JobTimeout, Reject, Retry, SsjobsError

__version__ = "0.1.0"
__all__ = ["Job", "JobTimeout", "Reject", "Retry", "SsjobsError", "__version__"]
