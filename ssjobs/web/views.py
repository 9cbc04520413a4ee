"""Rendering: the Jinja2 environment (autoescaping every value: payloads, tracebacks, topic
names and worker names come from Redis and may be anyone's), the filters the templates use,
the sparkline, and the static assets, read once from the package.
"""
from __future__ import annotations

import hashlib
import json
import time
from functools import cache
from importlib import resources
from typing import Any, NamedTuple
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup, escape

from .. import __version__
from ..text import age as _age
from ..text import milliseconds, size, when

STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}
POLL_MS = 3000           # how often a page refreshes its numbers
SPARK_BAR_W, SPARK_GAP, SPARK_H = 4, 1, 22     # px of the sparkline's bars


class Asset(NamedTuple):
    body: bytes
    content_type: str
    etag: str


@cache
def assets() -> dict[str, Asset]:
    """Every file of ssjobs/web/static, by name (package data: wheel and binary alike)."""
    out = {}
    for item in resources.files("ssjobs.web").joinpath("static").iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in STATIC_TYPES:
            body = item.read_bytes()
            out[item.name] = Asset(body, STATIC_TYPES[suffix],
                                   hashlib.sha256(body).hexdigest()[:16])
    return out


def environment(root_path: str) -> Environment:
    templates = resources.files("ssjobs.web").joinpath("templates")
    env = Environment(loader=FileSystemLoader(str(templates)), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.globals.update(root=root_path, version=__version__, poll_ms=POLL_MS,
                       sparkline=sparkline, asset=lambda name: _asset_url(root_path, name))
    env.filters.update(age=age, when=when, bytes=size, ms=milliseconds, num=num, rate=rate,
                       part=url_part, short=short_id, jsonpretty=_json)
    return env


def _asset_url(root_path: str, name: str) -> str:
    return f"{root_path}/static/{name}?v={assets()[name].etag}"


def age(since: Any, now: float | None = None) -> str:
    """``3m05s``: how long ago ``since`` (epoch s) was."""
    return _age(since, time.time() if now is None else now)


def num(v: Any) -> str:
    """A counter with thousands separators ("-" for unknown)."""
    if v is None:
        return "-"
    return f"{v:,}" if isinstance(v, int) else str(v)


def rate(v: Any) -> str:
    if v is None:
        return "-"
    v = float(v)
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def url_part(value: Any) -> str:
    """A topic or id inside a URL path (slashes kept: the routes accept them)."""
    return quote(str(value), safe="/")


def short_id(value: Any, keep: int = 12) -> str:
    text = str(value or "")
    return text if len(text) <= keep else "…" + text[-keep:]


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def sparkline(values: list[float | None], label: str = "") -> Markup:
    """An inline SVG bar chart of ``values`` (None: no data), scaled to the highest."""
    peak = max((v for v in values if v), default=0.0)
    width = len(values) * (SPARK_BAR_W + SPARK_GAP) - SPARK_GAP
    bars = []
    for i, v in enumerate(values):
        if v is None:
            continue
        h = max(1, round(v / peak * SPARK_H)) if peak > 0 else 1
        x = i * (SPARK_BAR_W + SPARK_GAP)
        cls = "bar" if v > 0 else "bar zero"
        bars.append(f'<rect class="{cls}" x="{x}" y="{SPARK_H - h}" width="{SPARK_BAR_W}" '
                    f'height="{h}"></rect>')
    title = escape(f"{label}jobs/s per minute, last {len(values)} minutes; peak {rate(peak)}/s")
    track = f'<rect class="track" x="0" y="{SPARK_H - 1}" width="{width}" height="1"></rect>'
    return Markup(f'<svg class="spark" viewBox="0 0 {width} {SPARK_H}" width="{width}" '
                  f'height="{SPARK_H}" preserveAspectRatio="none" role="img" '
                  f'aria-label="{title}"><title>{title}</title>{track}{"".join(bars)}</svg>')
