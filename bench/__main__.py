"""ssjobs benchmarks. Each prints one line and appends it to bench/RESULTS.md.

    python -m bench all            # everything (~5 min)
    python -m bench drain|live|latency|push|producer|ceiling|fairness|loop|master [--reps 3]

Variants that need the pure-Python loop run in a subprocess with SSJOBS_PURE_PYTHON=1.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import PrivateRedis, median, record  # noqa: E402


def _in_subprocess(script: str, args: list[str], pure: bool) -> str:
    env = dict(os.environ, SSJOBS_PURE_PYTHON="1" if pure else "0")
    out = subprocess.run([sys.executable, str(HERE / script), *args], env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def bench_drain(reps: int, jobs: int = 200_000) -> None:
    with PrivateRedis() as r:
        for workers in (1, 2):
            for pure in (False, True):
                rates = [float(_in_subprocess("drain.py", [r.url, str(jobs), str(workers), "100"],
                                              pure)) for _ in range(reps)]
                name = f"drain {workers}w {'pure' if pure else 'compiled'}"
                record(name, f"{median(rates):,.0f} jobs/s (median of {reps}: "
                             f"{', '.join(f'{x:,.0f}' for x in rates)}; {jobs:,} no-op jobs)")


def bench_latency(reps: int, jobs: int = 2000) -> None:
    with PrivateRedis() as r:
        runs = [list(map(float, _in_subprocess("latency.py", [r.url, str(jobs)], False).split()))
                for _ in range(reps)]
    p50, p99, p999 = (median([run[i] * 1000 for run in runs]) for i in range(3))
    record("pickup latency", f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, p99.9 {p999:.2f} ms "
                             f"(2 idle workers, {jobs} jobs pushed one by one at ~500/s, "
                             f"median of {reps})")


def bench_push(reps: int) -> None:
    from ssjobs.producer import Producer

    with PrivateRedis() as r, Producer(r.url, prefix="b") as p:
        client = r.client()
        for size, label in ((100, "100 B"), (1024, "1 KiB"), (65536, "64 KiB")):
            payload = {"data": "x" * (size - 10)}
            n_many = {100: 200_000, 1024: 100_000, 65536: 5_000}[size]
            n_one = {100: 10_000, 1024: 10_000, 65536: 2_000}[size]
            many, one = [], []
            for _ in range(reps):
                client.flushall()
                started = time.perf_counter()
                p.push_many("push", [payload] * n_many)
                many.append(n_many / (time.perf_counter() - started))
                client.flushall()
                started = time.perf_counter()
                for _ in range(n_one):
                    p.push("push", payload)
                one.append(n_one / (time.perf_counter() - started))
            assert client.llen("b:{push}:ready") == n_one
            record(f"push {label}", f"push_many {median(many):,.0f} jobs/s, push "
                                    f"{median(one):,.0f} jobs/s (median of {reps})")


def bench_producer(reps: int) -> None:
    """push_many, push and AsyncProducer.push against raw redis-py, in one run."""
    for pure in (False, True):
        out = _in_subprocess("producer.py", [str(reps)], pure)   # its own redis-server
        record(f"producer vs raw, {'pure' if pure else 'compiled'}",
               "; ".join(out.splitlines()) + f" (20-byte payloads, median of {reps}; raw: "
               "packb + LPUSH of 500 / a bare LPUSH / a bare redis.asyncio LPUSH)")


def bench_ceiling(reps: int, jobs: int = 200_000) -> None:
    """The no-op drain against the raw reliable-Lua drain, interleaved in one run."""
    raw, ours = [], []
    with PrivateRedis() as r:
        for _ in range(reps):
            raw.append(float(_in_subprocess("ceiling.py", [r.url, str(jobs), "500"], False)))
            ours.append(float(_in_subprocess("drain.py", [r.url, str(jobs), "2", "100"], False)))
    record("drain vs raw ceiling", f"{median(ours):,.0f} jobs/s (batch_size 100) vs raw "
                                   f"reliable Lua pop of 500 {median(raw):,.0f} jobs/s: "
                                   f"{median(ours) / median(raw):.2f}x (2 workers, {jobs:,} "
                                   f"no-op jobs, median of {reps})")


def bench_live(reps: int, seconds: float = 5.0) -> None:
    from workers import fork_workers, stop_workers

    from ssjobs.producer import Producer

    with PrivateRedis() as r:
        rates = []
        for _ in range(reps):
            client = r.client()
            client.flushall()
            pids = fork_workers(r.url, "live", "noop:noop", 2)
            time.sleep(0.5)
            pushed = 0
            with Producer(r.url, prefix="b") as p:
                started = time.perf_counter()
                while time.perf_counter() - started < seconds:
                    p.push_many("live", [None] * 500)
                    pushed += 500
            while int(client.hget("b:{live}:stats", "processed") or 0) < pushed:
                time.sleep(0.005)
            elapsed = time.perf_counter() - started
            stop_workers(pids)
            assert int(client.hget("b:{live}:stats", "processed")) == pushed
            rates.append(pushed / elapsed)
        record("live", f"{median(rates):,.0f} jobs/s (producer push_many×500 + 2 workers "
                       f"together for {seconds:.0f}s, median of {reps})")


def bench_fairness(reps: int) -> None:
    from workers import fork_workers, stop_workers

    from ssjobs.producer import Producer

    spreads = []
    with PrivateRedis() as r:
        for _ in range(reps):
            out = Path(f"/tmp/ssjobs-fair-{os.getpid()}.txt")
            out.unlink(missing_ok=True)
            os.environ["SSJOBS_BENCH_OUT"] = str(out)
            r.client().flushall()
            pids = fork_workers(r.url, "fair", "noop:sleepy_pid", 4)
            time.sleep(0.5)
            with Producer(r.url, prefix="b") as p:
                p.push_many("fair", [0.05] * 100)
            deadline = time.time() + 30
            while time.time() < deadline and (not out.exists() or
                                              out.read_text().count("\n") < 100):
                time.sleep(0.05)
            stop_workers(pids)
            per_worker = {}
            for pid in out.read_text().split():
                per_worker[pid] = per_worker.get(pid, 0) + 1
            assert sum(per_worker.values()) == 100
            counts = sorted(per_worker.values()) + [0] * (4 - len(per_worker))
            spreads.append(counts)
            out.unlink()
    worst = max(spreads, key=lambda c: max(c) - min(c))
    record("fairness", f"jobs per worker {sorted(worst)} in the worst of {reps} runs "
                       f"(4 workers, 100 jobs of 50 ms, batch_size 100)")


def bench_loop(reps: int) -> None:
    from loop import ns_per_job

    compiled = [ns_per_job("ssjobs._fastloop") for _ in range(reps)]
    pure = [ns_per_job("ssjobs._fastloop_py") for _ in range(reps)]
    c, p = median(compiled), median(pure)
    record("loop alone", f"compiled {c:.0f} ns/job, pure {p:.0f} ns/job: {p / c:.1f}x "
                         f"(decode + call no-op + timing + scoreboard, no Redis; median of {reps})")


def bench_master(reps: int) -> None:
    from master_bench import run

    with PrivateRedis() as r:
        runs = [run(r.url, 100) for _ in range(reps)]
    m = {k: median([run_[k] for run_ in runs]) for k in runs[0]}
    record("master, 100 idle workers",
           f"start→ready {m['start_s']:.2f} s, stop {m['stop_s']:.2f} s, master CPU "
           f"{m['master_cpu_pct']:.2f}% of a core, Redis round trips "
           f"{m['redis_client_cmds_per_s']:.0f}/s "
           f"({m['redis_cmds_per_s']:.0f}/s counting commands inside Lua), master RSS "
           f"{m['master_rss_mb']:.1f} MB, per worker USS {m['worker_uss_mb']:.1f} MB / PSS "
           f"{m['worker_pss_mb']:.1f} MB / RSS {m['worker_rss_mb']:.1f} MB (median of {reps})")


BENCHES = {"drain": bench_drain, "latency": bench_latency, "push": bench_push,
           "producer": bench_producer, "ceiling": bench_ceiling,
           "live": bench_live, "fairness": bench_fairness, "loop": bench_loop,
           "master": bench_master}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("which", choices=[*BENCHES, "all"])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    for name in (BENCHES if args.which == "all" else [args.which]):
        BENCHES[name](args.reps)


if __name__ == "__main__":
    main()
