"""Pick the compiled hot loop, or its pure-Python twin when it is missing or when
``SSJOBS_PURE_PYTHON=1`` asks for it."""
from __future__ import annotations

import os

if os.environ.get("SSJOBS_PURE_PYTHON", "") not in ("", "0"):
    from ._fastloop_py import *  # noqa: F403
    from ._fastloop_py import IMPLEMENTATION, run_batch
else:
    try:
        from ._fastloop import *  # noqa: F403
        from ._fastloop import IMPLEMENTATION, run_batch
    except ImportError:
        from ._fastloop_py import *  # noqa: F403
        from ._fastloop_py import IMPLEMENTATION, run_batch

__all__ = ["IMPLEMENTATION", "run_batch"]
