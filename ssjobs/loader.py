"""Put consumer_path on sys.path and import consumers ("module:function" / "module:Class")."""
from __future__ import annotations

import importlib
import inspect
import sys
import sysconfig
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import ConsumerImportError


def add_consumer_path(paths: Iterable[Path | str]) -> None:
    for p in reversed([str(p) for p in paths]):
        if p not in sys.path:
            sys.path.insert(0, p)


class Consumer:
    """A loaded consumer: ``call(job)`` per job, plus optional setup/teardown hooks."""

    __slots__ = ("spec", "call", "setup", "teardown")

    def __init__(self, spec: str, call: Callable[[Any], Any],
                 setup: Callable[[], Any] | None = None,
                 teardown: Callable[[], Any] | None = None) -> None:
        self.spec = spec
        self.call = call
        self.setup = setup
        self.teardown = teardown


def import_target(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConsumerImportError(f"consumer {spec!r}: expected 'module:function' or "
                                  "'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConsumerImportError(_import_hint(spec, exc)) from exc
    except Exception as exc:  # the consumer's own module failed while importing
        raise ConsumerImportError(f"consumer {spec!r}: importing {module_name!r} raised "
                                  f"{exc.__class__.__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConsumerImportError(f"consumer {spec!r}: module {module_name!r} has no "
                                      f"attribute {attr!r}") from None
    return target


def load_consumer(spec: str) -> Consumer:
    """Import and instantiate (for a class) a consumer; ConsumerImportError on any problem."""
    target = import_target(spec)
    if inspect.isclass(target):
        consume = getattr(target, "consume", None)
        if not callable(consume):
            raise ConsumerImportError(f"consumer {spec!r}: class has no consume(self, job)")
        try:
            instance = target()
        except Exception as exc:
            raise ConsumerImportError(f"consumer {spec!r}: {target.__name__}() raised "
                                      f"{exc.__class__.__name__}: {exc}") from exc
        return Consumer(spec, instance.consume, getattr(instance, "setup", None),
                        getattr(instance, "teardown", None))
    if not callable(target):
        raise ConsumerImportError(f"consumer {spec!r}: {type(target).__name__} is not callable")
    return Consumer(spec, target)


def _import_hint(spec: str, exc: ImportError) -> str:
    msg = f"consumer {spec!r}: {exc.__class__.__name__}: {exc}"
    text = str(exc)
    if ".so" in text or "undefined symbol" in text or "cpython-" in text:
        soabi = sysconfig.get_config_var("SOABI") or "unknown"
        msg += (f" (a compiled package built for another Python? this ssjobs runs Python "
                f"{sys.version.split()[0]}, ABI {soabi})")
    elif isinstance(exc, ModuleNotFoundError):
        msg += " (is its directory listed in process.consumer_path?)"
    return msg
