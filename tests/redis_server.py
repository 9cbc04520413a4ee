"""A private redis-server for tests: own port, own temp dir, restartable."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, workdir: Path, *, durable: bool = False, password: str = "") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: apt-get install -y redis-server")
        self.binary = binary
        self.workdir = workdir
        # durable: an fsync'd append-only file, so a killed server comes back with its data
        self.persistence = (["--appendonly", "yes", "--appendfsync", "always"] if durable
                            else ["--appendonly", "no"])
        self.password = password
        if password:
            self.persistence = [*self.persistence, "--requirepass", password]
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port: int | None = None) -> None:
        for _ in range(5):
            self.port = port or free_port()
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", *self.persistence, "--dir", str(self.workdir),
                 "--logfile", str(self.workdir / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ready():
                return
            self.stop()
            if port:
                time.sleep(0.2)
        raise RuntimeError(f"redis-server did not start; see {self.workdir / 'redis.log'}")

    def _wait_ready(self, timeout: float = 5.0) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5,
                             password=self.password or None)
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.RedisError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        """Kill the server (data is lost: no persistence) and start it on the same port."""
        port = self.port
        self.stop()
        time.sleep(down_for)
        self.start(port)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10, password=self.password or None)



class RedisClusterServers:
    """A 3-master Redis Cluster on free ports (no replicas), for the cluster tests."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        self.nodes = [RedisServer(_mkdir(workdir / f"node{i}")) for i in range(nodes)]
        for node in self.nodes:
            node.persistence = node.persistence + [
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000"]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "redis-cli"
        subprocess.run([cli, "--cluster", "create",
                        *[f"127.0.0.1:{n.port}" for n in self.nodes],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        deadline = time.time() + 30
        while time.time() < deadline:
            states = [n.client().cluster("info").get("cluster_state") for n in self.nodes]
            if all(s == "ok" for s in states):
                return
            time.sleep(0.1)
        raise RuntimeError("redis cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class SentinelServers:
    """A Redis master watched by one Sentinel (quorum 1), service name ``mymaster``; with
    ``password``, both the master and the Sentinel require it."""

    def __init__(self, workdir: Path, password: str = "") -> None:
        self.workdir = workdir
        self.password = password
        self.master = RedisServer(_mkdir(workdir / "master"), password=password)
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}127.0.0.1:{self.port}/mymaster/0"

    def start(self) -> None:
        self.master.start()
        for _ in range(5):
            self.port = free_port()
            conf = self.workdir / "sentinel.conf"
            auth = (f"requirepass {self.password}\nsentinel auth-pass mymaster {self.password}\n"
                    if self.password else "")
            conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                            f"sentinel monitor mymaster 127.0.0.1 {self.master.port} 1\n{auth}")
            self.proc = subprocess.Popen([self.master.binary, str(conf), "--sentinel"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            client = redis.Redis(port=self.port, socket_timeout=0.5,
                                 password=self.password or None)
            deadline = time.time() + 10
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    if client.sentinel_get_master_addr_by_name("mymaster"):
                        return
                except redis.RedisError:
                    pass
                time.sleep(0.05)
            self.proc.kill()
            self.proc.wait()
        raise RuntimeError("redis sentinel did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.master.stop()
