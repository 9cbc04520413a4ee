"""The master with 100 idle workers: start-to-ready, idle CPU of the master, Redis commands
per second from the whole idle pool, memory (RSS, USS, PSS), stop time."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

SERVE = ("import sys; from ssjobs.config import load_config; from ssjobs.master import serve; "
         "sys.exit(serve(load_config(sys.argv[1]), ready_fd=int(sys.argv[2])))")


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _mem(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                out[key] = int(rest.split()[0]) * 1024
    out["Uss"] = out.pop("Private_Clean", 0) + out.pop("Private_Dirty", 0)
    return out


def run(url: str, workers: int = 100) -> dict[str, float]:
    """Through a proxy that counts what the clients send: round trips exactly, while
    Redis' commandstats also counts the commands inside scripts."""
    from faultproxy import FaultProxy

    from ssjobs.runtime import ReadyPipe
    from ssjobs.scoreboard import Scoreboard

    proxy = FaultProxy(int(url.rsplit(":", 1)[1].split("/")[0]))
    direct, url = url, proxy.url
    root = Path(tempfile.mkdtemp(prefix="ssjobs-mbench-"))
    cfg = root / "jobs.toml"
    cfg.write_text(f"""
[process]
data_dir = "./data"
consumer_path = ["{HERE}"]
[log]
dir = "./logs"
[redis]
url = "{url}"
prefix = "mb"
[[jobs]]
topic = "idle"
consumer = "noop:noop"
static_workers = {workers}
""")
    ready = ReadyPipe()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(cfg), str(ready.write_fd)],
                            pass_fds=[ready.write_fd])
    ok, msg = ready.wait(60)
    start_s = time.perf_counter() - started
    assert ok, msg
    board = Scoreboard.open(root / "data" / "scoreboard.shm")
    pids = [w["pid"] for w in board.workers()]
    assert len(pids) == workers
    time.sleep(2)
    import redis
    client = redis.Redis.from_url(direct)
    client.config_resetstat()
    sent0 = proxy.stats.commands
    cpu0, t0 = _cpu_ticks(proc.pid), time.perf_counter()
    time.sleep(10)
    cpu1, t1 = _cpu_ticks(proc.pid), time.perf_counter()
    sent = proxy.stats.commands - sent0
    stats = client.info("commandstats")
    calls = sum(v["calls"] for v in stats.values()) - 1  # minus this INFO
    hz = os.sysconf("SC_CLK_TCK")
    master_cpu = (cpu1 - cpu0) / hz / (t1 - t0) * 100
    master_mem = _mem(proc.pid)
    worker_mem = [_mem(p) for p in pids[:10]]
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    stop_s = time.perf_counter() - started
    proxy.close()
    return {"start_s": start_s, "stop_s": stop_s, "master_cpu_pct": master_cpu,
            "redis_cmds_per_s": calls / (t1 - t0),
            "redis_client_cmds_per_s": sent / (t1 - t0),
            "master_rss_mb": master_mem["Rss"] / 2**20,
            "worker_uss_mb": sorted(m["Uss"] for m in worker_mem)[5] / 2**20,
            "worker_pss_mb": sorted(m["Pss"] for m in worker_mem)[5] / 2**20,
            "worker_rss_mb": sorted(m["Rss"] for m in worker_mem)[5] / 2**20}


if __name__ == "__main__":
    import json
    print(json.dumps(run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100)))
