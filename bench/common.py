"""Shared bench helpers: a private redis-server, machine facts, result recording."""
from __future__ import annotations

import datetime
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import redis

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """redis-server on a free port in a temp dir, no persistence."""

    def __enter__(self) -> PrivateRedis:
        self.dir = tempfile.mkdtemp(prefix="ssjobs-bench-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        client.close()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    try:
        rv = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        redis_v = rv.stdout.split("v=", 1)[1].split()[0]
    except (OSError, IndexError):
        redis_v = "?"
    return (f"{cpu_model()}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
            f"redis {redis_v}")


def median(values: list[float]) -> float:
    return statistics.median(values)


def record(name: str, line: str) -> None:
    """Print one result line and append it (dated, with the machine) to RESULTS.md."""
    print(line, flush=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    row = f"| {stamp} | {name} | {line} | {machine()} |"
    lines = RESULTS.read_text().splitlines() if RESULTS.exists() else []
    # the row goes at the end of the first table (the results), above the analysis
    in_table = False
    for i, text in enumerate(lines):
        if text.startswith("|"):
            in_table = True
        elif in_table:
            lines.insert(i, row)
            break
    else:
        lines.append(row)
    RESULTS.write_text("\n".join(lines) + "\n")
