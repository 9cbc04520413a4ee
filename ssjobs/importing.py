"""The one importer of ``"module.path:attr"`` specs (consumers, a custom notifier class, a
custom log handler); each caller words its own error.

Layer 0: imports nothing from ssjobs."""
from __future__ import annotations

import importlib
from typing import Any


def import_spec(spec: str) -> Any:
    """The object ``spec`` names (``attr`` may be dotted: ``module:Class.method``).

    ValueError for a spec without both parts; ImportError when the module cannot be
    imported; AttributeError when it has no such attribute; anything the module itself
    raises while it is imported propagates unchanged."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{spec!r}: expected 'module:attribute'")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AttributeError(f"module {module_name!r} has no attribute {attr!r}") from None
    return target
