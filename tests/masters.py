"""Start a real master (foreground, as a subprocess) and look at it from outside."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ssjobs.runtime import ReadyPipe, RuntimeFiles, children, pid_alive, wait_pids_gone
from ssjobs.scoreboard import Scoreboard

SERVE = ("import sys; from ssjobs.config import load_config; from ssjobs.master import serve; "
         "sys.exit(serve(load_config(sys.argv[1]), ready_fd=int(sys.argv[2])))")


class MasterProc:
    def __init__(self, config: Path, data_dir: Path) -> None:
        self.config = config
        self.files = RuntimeFiles(data_dir)
        self.proc: subprocess.Popen | None = None
        self.seen_pids: set[int] = set()
        self.serve_code = SERVE

    def start(self, expect_ok: bool = True, timeout: float = 30) -> tuple[bool, str]:
        ready = ReadyPipe()
        self.proc = subprocess.Popen([sys.executable, "-c", self.serve_code, str(self.config),
                                      str(ready.write_fd)], pass_fds=[ready.write_fd],
                                     cwd=self.config.parent)
        ok, message = ready.wait(timeout)
        if expect_ok:
            assert ok, f"master failed to start: {message}"
            self.workers()
        return ok, message

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> list[dict]:
        try:
            board = Scoreboard.open(self.files.scoreboard_path)
        except (OSError, ValueError):
            return []
        try:
            found = board.workers()
        finally:
            board.close()
        self.seen_pids.update(w["pid"] for w in found)
        return found

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def children(self) -> list[tuple[int, str]]:
        """Direct children of the master, zombies included, from /proc."""
        return children(self.pid)

    def zombies(self) -> list[int]:
        return [pid for pid, state in self.children() if state == "Z"]

    def kill_all(self) -> None:
        """Test clean-up: SIGKILL the master and every worker pid it was seen with."""
        if self.proc and self.proc.poll() is None:
            self.workers()
            self.seen_pids.update(pid for pid, _ in self.children())
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.seen_pids:
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        # no worker of this test may live on to take the next test's jobs
        wait_gone(self.seen_pids, 10)



def fd_targets(pid: int) -> dict[int, str]:
    """fd -> what it points at (``socket:[inode]``, a path ...) for a live process."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass  # closed meanwhile
    return found


def close_on_exec(pid: int, fd: int) -> bool:
    """Whether ``fd`` of ``pid`` has O_CLOEXEC (from /proc/PID/fdinfo)."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        flags = next(line for line in f if line.startswith("flags:")).split()[1]
    return bool(int(flags, 8) & 0o2000000)


def wait_gone(pids, timeout: float) -> list[int]:
    return wait_pids_gone(list(pids), timeout)
