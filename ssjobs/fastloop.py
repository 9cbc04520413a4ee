"""Pick the compiled hot loop, or its pure-Python twin when it is missing or when
``SSJOBS_PURE_PYTHON=1`` asks for it. Both have the same names (see ``_fastloop_py``)."""
from __future__ import annotations

import importlib
import os
from types import ModuleType


def _pick() -> ModuleType:
    if os.environ.get("SSJOBS_PURE_PYTHON", "") in ("", "0"):
        try:
            return importlib.import_module("ssjobs._fastloop")
        except ImportError:
            pass
    return importlib.import_module("ssjobs._fastloop_py")


_impl = _pick()
IMPLEMENTATION: str = _impl.IMPLEMENTATION
run_batch = _impl.run_batch
FAILED_RUN: int = _impl.FAILED_RUN
RETRY: int = _impl.RETRY
REJECT: int = _impl.REJECT
MALFORMED: int = _impl.MALFORMED

__all__ = ["FAILED_RUN", "IMPLEMENTATION", "MALFORMED", "REJECT", "RETRY", "run_batch"]
