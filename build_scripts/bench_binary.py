"""Numbers of the one-file binary, next to the pip install, on this machine:

    python build_scripts/bench_binary.py [--binary dist/ssjobs] [--jobs 50000] [--runs 3]

- size of the binary;
- ``ssjobs --version`` wall time, median of 10 (the binary unpacks itself at every start);
- ``ssjobs start`` (daemon, 4 workers) until it returns, i.e. until the master reports ready,
  median of 5;
- no-op throughput: a topic pre-filled with N no-op jobs, drained by 2 workers of a master
  started by ``ssjobs start``; jobs/s between 2% and 100% processed (start-up excluded),
  median of ``--runs``; binary and ``python -m ssjobs`` runs interleaved so that drift in
  the machine's load hits both alike.

Each run uses a private redis-server and a private TMPDIR. Prints a Markdown summary.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from redis_server import RedisServer  # noqa: E402

from ssjobs.broker import TopicKeys  # noqa: E402
from ssjobs.producer import Producer  # noqa: E402

NOOP = "def noop(job):\n    pass\n"


class Setup:
    def __init__(self, root: Path, url: str, workers: int, topic: str) -> None:
        self.root = root
        (root / "consumers").mkdir(parents=True, exist_ok=True)
        (root / "consumers" / "noop.py").write_text(NOOP)
        self.config = root / "jobs.toml"
        self.topic = topic
        self.config.write_text(
            '[process]\ndata_dir = "./data/process"\nconsumer_path = ["./consumers"]\n'
            '[log]\ndir = "./data/logs"\nlevel = "warning"\n'
            f'[redis]\nurl = "{url}"\nprefix = "bb"\n'
            f'[[jobs]]\ntopic = "{topic}"\nconsumer = "noop:noop"\n'
            f"static_workers = {workers}\nbatch_size = 100\n")


def command(kind: str, binary: Path) -> list[str]:
    return [str(binary)] if kind == "binary" else [sys.executable, "-m", "ssjobs"]


def timed(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def version_times(argv: list[str], env: dict, n: int = 10) -> list[float]:
    timed(argv + ["--version"], env)  # warm the page cache
    return [timed(argv + ["--version"], env) for _ in range(n)]


def start_to_ready(argv: list[str], env: dict, setup: Setup, n: int = 5) -> list[float]:
    times = []
    for _ in range(n):
        times.append(timed(argv + ["start", "-c", str(setup.config)], env))
        subprocess.run(argv + ["stop", "-c", str(setup.config)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return times


def drain(argv: list[str], env: dict, setup: Setup, server: RedisServer, jobs: int) -> float:
    client = server.client()
    client.flushall()
    with Producer(server.url, prefix="bb") as producer:
        for first in range(0, jobs, 10_000):
            producer.push_many(setup.topic, [None] * min(10_000, jobs - first))
    stats = TopicKeys("bb", setup.topic).stats
    # The workers start on the backlog before `start` returns: watch from the beginning.
    starting = subprocess.Popen(argv + ["start", "-c", str(setup.config)], env=env,
                                stdout=subprocess.DEVNULL)
    try:
        low = jobs // 50
        processed = 0
        while processed < low:
            time.sleep(0.001)
            processed = int(client.hget(stats, "processed") or 0)
        t0 = time.perf_counter()
        first = processed
        while processed < jobs:
            time.sleep(0.002)
            processed = int(client.hget(stats, "processed") or 0)
        elapsed = time.perf_counter() - t0
    finally:
        assert starting.wait(60) == 0
        subprocess.run(argv + ["stop", "-c", str(setup.config)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    assert processed == jobs, f"{processed} != {jobs}"
    client.close()
    return (jobs - first) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", type=Path, default=ROOT / "dist" / "ssjobs")
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    binary = args.binary.resolve()

    work = Path(tempfile.mkdtemp(prefix="ssjobs-bench-binary-"))
    tmp = work / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSJOBS_")}
    env["TMPDIR"] = str(tmp)
    server = RedisServer(work)
    server.start()
    try:
        kinds = ("binary", "pip")
        size = binary.stat().st_size
        version = {k: version_times(command(k, binary), env) for k in kinds}
        ready = {k: start_to_ready(command(k, binary), env,
                                   Setup(work / f"ready-{k}", server.url, 4, "ready"))
                 for k in kinds}
        rates: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.runs):
            for k in kinds:
                setup = Setup(work / f"drain-{k}", server.url, 2, "drain")
                rates[k].append(drain(command(k, binary), env, setup, server, args.jobs))
        leftovers = sorted(p.name for p in tmp.iterdir())
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    line = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout
    print(f"binary: {binary} ({line.strip()})")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, {platform.platform()}")
    print("")
    print("| measure | binary | pip install | ratio |")
    print("|---|---|---|---|")
    print(f"| size | {size / 2**20:.1f} MiB | | |")
    for name, data, unit, fmt in (
            ("`--version` wall time, median of 10", version, "s", "{:.3f}"),
            ("`start` to ready, 4 workers, median of 5", ready, "s", "{:.3f}")):
        b, p = med(data["binary"]), med(data["pip"])
        print(f"| {name} | {fmt.format(b)} {unit} | {fmt.format(p)} {unit} | {b / p:.2f} |")
    b, p = med(rates["binary"]), med(rates["pip"])
    print(f"| no-op drain, {args.jobs:,} jobs, 2 workers, median of {args.runs} "
          f"| {b:,.0f} jobs/s | {p:,.0f} jobs/s | {b / p:.3f} |")
    print("")
    print("raw: " + "; ".join(f"{k} version {[round(x, 3) for x in version[k]]}, "
                              f"ready {[round(x, 3) for x in ready[k]]}, "
                              f"drain {[round(x) for x in rates[k]]}" for k in kinds))
    print(f"unpacked dirs left in TMPDIR: {leftovers or 'none'}")


if __name__ == "__main__":
    main()
