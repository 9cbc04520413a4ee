"""A/B: the no-op drain of this tree against another checkout of ssjobs, in one run.

    git worktree add /tmp/baseline <commit>
    (cd /tmp/baseline && python setup.py -q build_ext --inplace)
    python bench/ab.py /tmp/baseline [--reps 5] [--jobs 200000] [--workers 2]

Runs are interleaved (baseline, this tree, baseline, ...) on one private redis-server, so
drift in the machine's load hits both alike; prints each side's median jobs/s and their
ratio. Each side runs its own bench/drain.py with its own ssjobs first on sys.path.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import PrivateRedis  # noqa: E402


def drain(tree: Path, url: str, jobs: int, workers: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), SSJOBS_PURE_PYTHON="0")
    out = subprocess.run([sys.executable, str(tree / "bench" / "drain.py"), url, str(jobs),
                          str(workers), "100"], env=env, cwd=tree, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("baseline", type=Path)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    ns = parser.parse_args()
    this = HERE.parent
    rates: dict[str, list[float]] = {"baseline": [], "this": []}
    with PrivateRedis() as r:
        for _ in range(ns.reps):
            rates["baseline"].append(drain(ns.baseline.resolve(), r.url, ns.jobs, ns.workers))
            rates["this"].append(drain(this, r.url, ns.jobs, ns.workers))
    base, mine = (statistics.median(rates[k]) for k in ("baseline", "this"))
    for name, values in rates.items():
        print(f"{name}: median {statistics.median(values):,.0f} jobs/s "
              f"({', '.join(f'{v:,.0f}' for v in values)})")
    print(f"ratio this/baseline: {mine / base:.3f} ({ns.jobs:,} no-op jobs, {ns.workers} "
          f"workers, median of {ns.reps})")


if __name__ == "__main__":
    main()
