"""Where each key of a TOML text is: a light scan of the source, for error messages
(tomllib gives values, not line numbers). Best effort: it never raises."""
from __future__ import annotations

import re
from typing import Mapping

_PART = r"""(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)"""
_HEADER = re.compile(rf"\s*(\[\[?)\s*({_PART}(?:\s*\.\s*{_PART})*)\s*\]")
_ASSIGN = re.compile(rf"\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")


def _parts(dotted: str) -> list[str]:
    return [p.strip("\"'") for p in re.findall(_PART, dotted)]


def _header_path(parts: list[str], array: bool, counts: dict[str, int]) -> str:
    """``[[jobs]]`` → ``jobs[<n>]``; ``[jobs.redis]`` → ``jobs[<last n>].redis``."""
    path = ""
    for i, part in enumerate(parts):
        path = f"{path}.{part}" if path else part
        if array and i == len(parts) - 1:
            counts[path] = counts.get(path, 0) + 1
        if path in counts:
            path = f"{path}[{counts[path] - 1}]"
    return path


def key_lines(text: str) -> dict[str, int]:
    """Map key paths (``jobs[1].topic``) and table paths (``jobs[1]``) to line numbers."""
    lines: dict[str, int] = {}
    counts: dict[str, int] = {}
    table, in_multiline = "", False
    try:
        for number, line in enumerate(text.splitlines(), 1):
            if not in_multiline and (header := _HEADER.match(line)):
                table = _header_path(_parts(header[2]), header[1] == "[[", counts)
                lines.setdefault(table, number)
            elif not in_multiline and (assign := _ASSIGN.match(line)):
                key = table
                for part in _parts(assign[1]):  # `a.b = 1` also locates `a`
                    key = f"{key}.{part}" if key else part
                    lines.setdefault(key, number)
            in_multiline ^= (line.count('"""') + line.count("'''")) % 2 == 1
    except Exception:  # a best-effort scan must never hide the real errors
        pass
    return lines


def line_of(path: str, lines: Mapping[str, int]) -> int | None:
    """The line of ``path``, else of its nearest enclosing key or table."""
    while path:
        if path in lines:
            return lines[path]
        parent = re.sub(r"(\.[^.\[\]]*|\[\d+\])$", "", path)
        path = "" if parent == path else parent
    return None


