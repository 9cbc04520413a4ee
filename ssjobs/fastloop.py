"""Pick the compiled hot loop, or its pure-Python twin when it is missing or when
``SSJOBS_PURE_PYTHON=1`` asks for it. Both have the same names (see ``_fastloop_py``); the
type checker reads the twin's signatures."""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING


def _pick() -> ModuleType:
    if os.environ.get("SSJOBS_PURE_PYTHON", "") in ("", "0"):
        try:
            return importlib.import_module("ssjobs._fastloop")
        except ImportError:
            pass
    return importlib.import_module("ssjobs._fastloop_py")


if TYPE_CHECKING:
    from ._fastloop_py import IMPLEMENTATION, assemble, mark_forked, run_batch
else:
    _impl = _pick()
    IMPLEMENTATION = _impl.IMPLEMENTATION
    run_batch = _impl.run_batch
    mark_forked = _impl.mark_forked
    assemble = _impl.assemble

__all__ = ["IMPLEMENTATION", "assemble", "mark_forked", "run_batch"]
