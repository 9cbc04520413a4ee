"""``rate_1m`` of ``status`` (jobs/s over the last minute, fleet-wide like the ``processed``
counter it comes from), when no master gives its own figures: every call records the
topics' ``processed`` counters in ``rates.json`` in data_dir (a few samples, at most one per
``RATE_SAMPLE_EVERY_S``, kept ``RATE_KEEP_S``) and the rate is the counter's growth since the
sample closest to one minute ago. The master refreshes its status snapshot periodically, so
the samples are there whenever a master runs."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .runtime import RuntimeFiles, read_file, write_atomic

RATES_NAME = "rates.json"
RATE_WINDOW_S = 60.0         # rate_1m: the window the rate is measured over
RATE_SAMPLE_EVERY_S = 2.0    # fewer samples than this apart add nothing but file writes
RATE_KEEP_S = 180.0          # samples older than this cannot serve a one-minute window


def update_rates(files: RuntimeFiles, processed: dict[str, int],
                 now: float | None = None) -> dict[str, float]:
    """Record ``processed`` in rates.json and return jobs/s per topic over ~the last minute."""
    now = time.time() if now is None else now
    path = files.dir / RATES_NAME
    samples = _read_samples(path)
    rates = compute_rates(samples, processed, now)
    samples = [s for s in samples if now - RATE_KEEP_S <= s[0] <= now]
    if not samples or now - samples[-1][0] >= RATE_SAMPLE_EVERY_S:
        samples.append((now, dict(processed)))
        try:
            write_atomic(path, json.dumps({"samples": samples}).encode(), mode=0o644)
        except OSError:
            pass  # a read-only data_dir (status run as another user): rates just stay 0
    return rates


def compute_rates(samples: list[tuple[float, dict[str, int]]], processed: dict[str, int],
                  now: float) -> dict[str, float]:
    """Pure: per topic, growth of ``processed`` since the sample nearest to RATE_WINDOW_S ago
    (at least RATE_SAMPLE_EVERY_S old), per second. 0.0 without such a sample or when the
    counter went down (Redis flushed)."""
    rates = {}
    for topic, count in processed.items():
        best = None
        for t, counts in samples:
            age = now - t
            if RATE_SAMPLE_EVERY_S <= age <= RATE_KEEP_S and topic in counts:
                if best is None or abs(age - RATE_WINDOW_S) < abs(now - best[0] - RATE_WINDOW_S):
                    best = (t, counts[topic])
        if best is None or count < best[1]:
            rates[topic] = 0.0
        else:
            rates[topic] = round((count - best[1]) / (now - best[0]), 2)
    return rates


def _read_samples(path: os.PathLike) -> list[tuple[float, dict[str, int]]]:
    try:
        raw = json.loads(read_file(Path(path))).get("samples", [])
        return [(float(t), {str(k): int(v) for k, v in counts.items()}) for t, counts in raw]
    except (OSError, ValueError, TypeError, AttributeError):
        return []
