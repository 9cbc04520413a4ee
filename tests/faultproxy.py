"""A TCP proxy between ssjobs and a test's redis-server that loses replies on purpose.

It reads the RESP commands each client sends and the replies Redis sends back, and can:
- drop the reply of the Nth command matching a rule, after Redis ran it, by resetting the
  client's connection (what a failover, a proxy or a flaky network does to a client);
- reset a connection before a matching command reaches Redis;
- delay matching commands;
- do either at random, for the soak.

It runs its own asyncio loop in a thread of the test process; ``url`` is where ssjobs should
connect instead of the server.
"""
from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable

from ssjobs.broker import script_source, with_lib

Command = list[bytes]


def script_sha(name: str) -> bytes:
    """The EVALSHA digest of one of ssjobs' scripts as the broker loads it."""
    text = script_source(name) if name == "lib" else with_lib(name)
    return hashlib.sha1(text.encode()).hexdigest().encode()


def runs_script(name: str) -> Callable[[Command], bool]:
    sha = script_sha(name)
    return lambda cmd: cmd[0].upper() == b"EVALSHA" and cmd[1] == sha


def is_command(name: str) -> Callable[[Command], bool]:
    wanted = name.upper().encode()
    return lambda cmd: cmd[0].upper() == wanted


@dataclass
class _Rule:
    match: Callable[[Command], bool]
    action: str            # "drop_reply" | "reset" | "delay"
    nth: int = 1           # act on the nth match (counting from 1) ...
    times: int = 1         # ... and on this many after it
    seconds: float = 0.0
    seen: int = 0
    done: int = 0

    def fires(self, cmd: Command) -> bool:
        if self.done >= self.times or not self.match(cmd):
            return False
        self.seen += 1
        if self.seen < self.nth:
            return False
        self.done += 1
        return True


@dataclass
class Stats:
    commands: int = 0
    dropped: list[Command] = field(default_factory=list)
    resets: list[Command] = field(default_factory=list)


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.rules: list[_Rule] = []
        self.stats = Stats()
        self._random: tuple[float, float, random.Random] | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # -- faults ----------------------------------------------------------------------------
    def drop_reply(self, match: Callable[[Command], bool], nth: int = 1, times: int = 1) -> None:
        """Let Redis run the nth matching command (and ``times - 1`` more), then reset the
        client's connection instead of giving it the reply. Error replies and empty replies
        (nil, an empty array: a blocking fetch that timed out) do not count."""
        with self._lock:
            self.rules.append(_Rule(match, "drop_reply", nth, times))

    def reset_before(self, match: Callable[[Command], bool], nth: int = 1) -> None:
        """Reset the connection instead of forwarding the nth matching command."""
        with self._lock:
            self.rules.append(_Rule(match, "reset", nth))

    def delay(self, match: Callable[[Command], bool], seconds: float, times: int = 1) -> None:
        with self._lock:
            self.rules.append(_Rule(match, "delay", 1, times, seconds))

    def random_faults(self, drop: float, reset: float, seed: int = 1) -> None:
        """From now on, lose each reply with probability ``drop`` and reset before a
        command with probability ``reset`` (``0, 0`` turns this off)."""
        with self._lock:
            self._random = (drop, reset, random.Random(seed)) if drop or reset else None

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self._random = None

    def _decide(self, cmd: Command, when: str) -> _Rule | str | None:
        with self._lock:
            for rule in self.rules:
                if (rule.action == "drop_reply") == (when == "reply") and rule.fires(cmd):
                    return rule
            if self._random is not None:
                drop, reset, rng = self._random
                if when == "reply" and rng.random() < drop:
                    return "drop_reply"
                if when == "command" and rng.random() < reset:
                    return "reset"
        return None

    # -- the proxy -------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _serve(self, c_reader: asyncio.StreamReader,
                     c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(c_writer)
            return
        pending: asyncio.Queue[Command] = asyncio.Queue()
        up = asyncio.ensure_future(self._upstream(c_reader, s_writer, c_writer, pending))
        down = asyncio.ensure_future(self._downstream(s_reader, c_writer, s_writer, pending))
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        _reset(c_writer)
        s_writer.close()

    async def _upstream(self, c_reader, s_writer, c_writer, pending) -> None:
        buf = b""
        while True:
            data = await c_reader.read(65536)
            if not data:
                return
            buf += data
            while True:
                parsed = _parse_command(buf)
                if parsed is None:
                    break
                cmd, used = parsed
                raw, buf = buf[:used], buf[used:]
                self.stats.commands += 1
                decision = self._decide(cmd, "command")
                if decision == "reset" or (isinstance(decision, _Rule)
                                           and decision.action == "reset"):
                    self.stats.resets.append(cmd)
                    return
                if isinstance(decision, _Rule) and decision.action == "delay":
                    await s_writer.drain()
                    await asyncio.sleep(decision.seconds)
                pending.put_nowait(cmd)
                s_writer.write(raw)
            await s_writer.drain()

    async def _downstream(self, s_reader, c_writer, s_writer, pending) -> None:
        buf = b""
        while True:
            data = await s_reader.read(65536)
            if not data:
                return
            buf += data
            while True:
                end = _reply_end(buf, 0)
                if end is None:
                    break
                reply, buf = buf[:end], buf[end:]
                cmd = await pending.get()
                if reply not in _EMPTY and not reply.startswith(b"-") \
                        and self._decide(cmd, "reply") is not None:
                    self.stats.dropped.append(cmd)
                    return
                c_writer.write(reply)
            await c_writer.drain()


_EMPTY = (b"$-1\r\n", b"*-1\r\n", b"*0\r\n", b"_\r\n")


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:  # close with RST, as a dying peer or a middlebox does
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def _line(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    end = buf.find(b"\r\n", pos)
    return None if end < 0 else (buf[pos:end], end + 2)


def _parse_command(buf: bytes) -> tuple[Command, int] | None:
    """One RESP array of bulk strings (what clients send): (args, bytes used) or None."""
    head = _line(buf, 0)
    if head is None:
        return None
    if not head[0].startswith(b"*"):  # an inline command
        return head[0].split(), head[1]
    count, pos = int(head[0][1:]), head[1]
    args = []
    for _ in range(count):
        size = _line(buf, pos)
        if size is None:
            return None
        n, pos = int(size[0][1:]), size[1]
        if len(buf) < pos + n + 2:
            return None
        args.append(buf[pos:pos + n])
        pos += n + 2
    return args, pos


def _reply_end(buf: bytes, pos: int) -> int | None:
    """Where the RESP2/RESP3 reply starting at ``pos`` ends, or None if it is not all there
    (redis-py greets with HELLO, whose reply is a RESP3 map)."""
    head = _line(buf, pos)
    if head is None:
        return None
    kind, rest = head[0][:1], head[0][1:]
    if kind in (b"+", b"-", b":", b"_", b"#", b",", b"("):
        return head[1]
    if kind in (b"$", b"=", b"!"):
        n = int(rest)
        if n < 0:
            return head[1]
        return head[1] + n + 2 if len(buf) >= head[1] + n + 2 else None
    if kind in (b"*", b"~", b">", b"%", b"|"):
        items = max(int(rest), 0) * (2 if kind in (b"%", b"|") else 1)
        pos = head[1]
        for _ in range(items):
            end = _reply_end(buf, pos)
            if end is None:
                return None
            pos = end
        if kind == b"|":  # an attribute precedes the reply it annotates
            return _reply_end(buf, pos)
        return pos
    raise ValueError(f"unexpected RESP reply {head[0][:20]!r}")
