"""WebSocket followers for the benchmarks: many connections per process, several processes.

A reader that keeps up with tens of thousands of frames per second on a small machine,
so a load measures the server and not the client: raw sockets under one `epoll` per
process, the frame header parsed by hand (server frames are never masked, and no
extension is offered), and of each frame only the type, the cursor and the chunk index
looked at. Latency is the receive time minus the chunk's cursor, a Redis millisecond
timestamp taken on the same machine.
"""

from __future__ import annotations

import base64
import multiprocessing
import os
import select
import socket
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

_CHUNK = b'{"type":"chunk","id":"'
_ID_AT = len(_CHUNK)
_INDEX_AFTER_ID = len(b'","index":')
_TERMINAL = (b'{"type":"done"', b'{"type":"error"', b'{"type":"cancelled"')
_PONG_EMPTY = bytes([0x8A, 0x80, 0, 0, 0, 0])  # a masked, empty pong


@dataclass
class Tally:
    """What a set of followers received."""

    latencies_ms: array = field(default_factory=lambda: array("d"))
    chunks: int = 0
    duplicates: int = 0
    gaps: int = 0
    ended: int = 0
    first_ms: float = float("inf")
    last_ms: float = 0.0
    cpu_s: float = 0.0

    def add(self, other: Tally) -> None:
        """Merge another process's tally into this one."""
        self.latencies_ms.extend(other.latencies_ms)
        self.chunks += other.chunks
        self.duplicates += other.duplicates
        self.gaps += other.gaps
        self.ended += other.ended
        self.first_ms = min(self.first_ms, other.first_ms)
        self.last_ms = max(self.last_ms, other.last_ms)
        self.cpu_s += other.cpu_s


def open_ws(host: str, port: int, path: str, timeout_s: float = 30) -> socket.socket:
    """A WebSocket connection after a successful handshake (blocking socket); any frame
    that came with the handshake's answer is dropped (see `handshake`)."""
    return handshake(host, port, path, timeout_s)[0]


def upgrade_request(host: str, port: int, path: str) -> bytes:
    """A WebSocket upgrade request for `path`, with a fresh key."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def handshake(
    host: str, port: int, path: str, timeout_s: float = 30
) -> tuple[socket.socket, bytes]:
    """A WebSocket connection after a successful handshake, and the bytes that came after
    the answer's head (the start of the first frames)."""
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.sendall(upgrade_request(host, port, path))
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError(f"{path}: closed during the handshake")
        head += data
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"{path}: {head.splitlines()[0]!r}")
    return sock, head.split(b"\r\n\r\n", 1)[1]


class _Follower:
    """One connection's buffer and the next chunk index it expects."""

    __slots__ = ("buf", "next_index", "sock")

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.buf = bytearray(rest)
        self.next_index = 0


def frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete frames in `buf` as (opcode, payload), taken out of it; the rest stays."""
    pos, out, size = 0, [], len(buf)
    while size - pos >= 2:
        n, head = buf[pos + 1] & 0x7F, 2
        if n == 126:
            if size - pos < 4:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif n == 127:
            if size - pos < 10:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        if size - pos < head + n:
            break
        out.append((buf[pos] & 0x0F, bytes(buf[pos + head : pos + head + n])))
        pos += head + n
    del buf[:pos]
    return out


def follow_all(host: str, port: int, paths: list[str], timeout_s: float, ready: Any) -> Tally:
    """Follow every path until its terminal event (or `timeout_s`); tell `ready` once all
    are connected."""
    followers: dict[int, _Follower] = {}
    for path in paths:
        sock = open_ws(host, port, path)
        sock.setblocking(False)
        followers[sock.fileno()] = _Follower(sock, b"")
    ready.send(len(followers))
    cpu_start = time.process_time()
    tally = Tally()
    lat = tally.latencies_ms
    poller = select.epoll()
    for fd in followers:
        poller.register(fd, select.EPOLLIN)
    deadline = time.monotonic() + timeout_s
    while followers and time.monotonic() < deadline:
        for fd, _ in poller.poll(1.0):
            f = followers.get(fd)
            if f is None:
                continue
            try:
                data = f.sock.recv(1 << 18)
            except BlockingIOError:
                continue
            now_ms = time.time() * 1000
            if not data:
                poller.unregister(fd)
                del followers[fd]
                f.sock.close()
                continue
            f.buf += data
            for opcode, payload in frames(f.buf):
                if opcode == 1 and payload.startswith(_CHUNK):
                    id_end = payload.index(b'"', _ID_AT)
                    cursor = payload[_ID_AT:id_end]
                    lat.append(now_ms - int(cursor[: cursor.index(b"-")]))
                    at = id_end + _INDEX_AFTER_ID
                    index = int(payload[at : payload.index(b",", at)])
                    if index == f.next_index:
                        tally.chunks += 1
                        f.next_index += 1
                    elif index < f.next_index:
                        tally.duplicates += 1
                    else:
                        tally.gaps += index - f.next_index
                        tally.chunks += 1
                        f.next_index = index + 1
                    tally.last_ms = now_ms
                    if tally.first_ms > now_ms:
                        tally.first_ms = now_ms
                elif opcode == 1 and payload.startswith(_TERMINAL):
                    tally.ended += 1
                elif opcode == 9:
                    f.sock.sendall(_PONG_EMPTY)
                elif opcode == 8:
                    poller.unregister(fd)
                    del followers[fd]
                    f.sock.close()
                    break
    for f in followers.values():
        f.sock.close()
    tally.cpu_s = time.process_time() - cpu_start
    return tally


def _child(host: str, port: int, paths: list[str], timeout_s: float, ready: Any, out: Any) -> None:
    try:
        out.send(follow_all(host, port, paths, timeout_s, ready))
    except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
        ready.send(-1)
        out.send(e)


class Followers:
    """`len(paths)` WebSocket followers spread over `processes` client processes."""

    def __init__(self, host: str, port: int, paths: list[str], processes: int, timeout_s: float):
        ctx = multiprocessing.get_context("fork")
        self.procs, self.ready, self.results = [], [], []
        for k in range(processes):
            share = paths[k::processes]
            if not share:
                continue
            ready_r, ready_w = ctx.Pipe(duplex=False)
            out_r, out_w = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_child, args=(host, port, share, timeout_s, ready_w, out_w), daemon=True
            )
            proc.start()
            self.procs.append(proc)
            self.ready.append(ready_r)
            self.results.append(out_r)

    def wait_connected(self) -> int:
        """Block until every process has connected all its followers; how many there are."""
        counts = [r.recv() for r in self.ready]
        if any(c < 0 for c in counts):
            raise RuntimeError("a client process failed to connect: " + repr(self.wait()))
        return sum(counts)

    def is_done(self) -> bool:
        """Whether every process has its tally ready (it blocks sending it until `wait`)."""
        return all(out.poll() for out in self.results)

    def wait(self) -> Tally:
        """Every process's tally, merged."""
        return merge_tallies(self.results, self.procs, Tally())


class _Adds(Protocol):
    def add(self, other: Any) -> None: ...


T = TypeVar("T", bound=_Adds)


def merge_tallies(results: list[Any], procs: list[Any], total: T) -> T:
    """Each client process's tally (from its pipe) added to `total`, then the processes
    joined; an exception a process sent instead is raised here."""
    for out in results:
        result = out.recv()
        if isinstance(result, Exception):
            raise result
        total.add(result)
    for proc in procs:
        proc.join(10)
    return total
