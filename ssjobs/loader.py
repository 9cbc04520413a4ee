"""Put consumer_path on sys.path and import consumers ("module:function" / "module:Class")."""
from __future__ import annotations

import importlib
import importlib.machinery
import inspect
import platform
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import ConsumerImportError
from .importing import import_spec


def add_consumer_path(paths: Iterable[Path | str]) -> None:
    for p in reversed([str(p) for p in paths]):
        if p not in sys.path:
            sys.path.insert(0, p)


class Consumer:
    """A loaded consumer: ``call(job)`` per job, plus optional setup/teardown hooks."""

    __slots__ = ("spec", "call", "setup", "teardown", "is_async")

    def __init__(self, spec: str, call: Callable[[Any], Any],
                 setup: Callable[[], Any] | None = None,
                 teardown: Callable[[], Any] | None = None) -> None:
        self.spec = spec
        self.call = call
        self.setup = setup
        self.teardown = teardown
        # an ``async def`` consumer: its worker runs the coroutines on an event loop
        self.is_async = inspect.iscoroutinefunction(call)


def import_target(spec: str) -> Any:
    try:
        return import_spec(spec)
    except ValueError:
        raise ConsumerImportError(f"consumer {spec!r}: expected 'module:function' or "
                                  "'module:Class'") from None
    except ImportError as exc:
        raise ConsumerImportError(_import_hint(spec, exc)) from exc
    except AttributeError as exc:
        raise ConsumerImportError(f"consumer {spec!r}: {exc}") from None
    except Exception as exc:  # the consumer's own module failed while importing
        raise ConsumerImportError(f"consumer {spec!r}: importing {spec.partition(':')[0]!r} "
                                  f"raised {exc.__class__.__name__}: {exc}") from exc


def load_consumer(spec: str) -> Consumer:
    """Import and instantiate (for a class) a consumer; ConsumerImportError on any problem."""
    target: Any = import_target(spec)
    if inspect.isclass(target):
        if not callable(getattr(target, "consume", None)):
            raise ConsumerImportError(f"consumer {spec!r}: class has no consume(self, job)")
        try:
            instance: Any = target()
        except Exception as exc:
            raise ConsumerImportError(f"consumer {spec!r}: {target.__name__}() raised "
                                      f"{exc.__class__.__name__}: {exc}") from exc
        setup, teardown = getattr(instance, "setup", None), getattr(instance, "teardown", None)
        _check_call(spec, instance.consume, f"{target.__name__}.consume", 1)
        for hook, name in ((setup, "setup"), (teardown, "teardown")):
            if hook is not None:
                _check_call(spec, hook, f"{target.__name__}.{name}", 0)
        return Consumer(spec, instance.consume, setup, teardown)
    if not callable(target):
        raise ConsumerImportError(f"consumer {spec!r}: {type(target).__name__} is not callable")
    _check_call(spec, target, getattr(target, "__name__", attr_of(spec)), 1)
    return Consumer(spec, target)


def attr_of(spec: str) -> str:
    return spec.partition(":")[2]


def _check_call(spec: str, func: Callable[..., Any], name: str, args: int) -> None:
    """Refuse, at import, a consumer that cannot be called as ssjobs calls it (with the
    job; hooks with nothing): else every job would fail with the same TypeError."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # a builtin or C function: no signature to read
        return
    try:
        signature.bind(*([None] * args))
    except TypeError:
        takes = "one argument, the job" if args else "no arguments"
        raise ConsumerImportError(f"consumer {spec!r}: {name}{signature} cannot be called "
                                  f"with {takes}") from None


def _import_hint(spec: str, exc: ImportError) -> str:
    msg = f"consumer {spec!r}: {exc.__class__.__name__}: {exc}"
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    foreign = foreign_extension(missing)
    if missing and foreign is not None:
        return (f"consumer {spec!r}: package {missing.partition('.')[0]!r} has a compiled "
                f"module built for {_built_for(foreign.name)}: {foreign}; {_runs_on()}")
    text = str(exc)
    if ".so" in text or "undefined symbol" in text or "cpython-" in text:
        package = (exc.name or "").partition(".")[0]
        msg += (f" (a compiled package{f' ({package!r})' if package else ''} built for "
                f"another Python or system? {_runs_on()})")
    elif isinstance(exc, ModuleNotFoundError):
        msg += " (is its directory listed in process.consumer_path?)"
    return msg


def foreign_extension(module: str | None) -> Path | None:
    """A compiled file for ``module`` on sys.path that this Python cannot load, because it was
    built for another Python version or platform (``pip install --target`` with another
    Python): this Python does not even see it, the import says the module does not exist."""
    if not module:
        return None
    *package, leaf = module.split(".")
    loadable = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for entry in sys.path:
        where = Path(entry or ".", *package)
        try:
            candidates = list(where.glob(f"{leaf}.*"))
        except OSError:
            continue
        for path in sorted(candidates):
            if path.suffix in (".so", ".pyd") and path.name[len(leaf):] not in loadable:
                return path
    return None


def _built_for(filename: str) -> str:
    """'Python 3.10' from ``x.cpython-310-x86_64-linux-gnu.so``, else the file's tag."""
    tag = filename.split(".", 1)[1].rsplit(".", 1)[0] if filename.count(".") > 1 else ""
    version = re.match(r"(?:cpython-|cp)(3)(\d+)", tag)
    if version:
        return f"Python {version[1]}.{version[2]} ({tag})"
    return f"another Python or platform ({tag or filename})"


def _runs_on() -> str:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return (f"this ssjobs runs Python {platform.python_version()} and loads compiled modules "
            f"named *{suffix} or *.abi3.so: install the package with that Python "
            f"(pip install --target DIR --python-version "
            f"{sys.version_info[0]}.{sys.version_info[1]} --only-binary=:all: PACKAGE)")
