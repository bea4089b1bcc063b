"""Followers arriving all at once: a join storm, and a reconnect storm after an API crash.

    .venv/bin/python -m bench.storms [--joins 50x4,100x10] [--reconnect 1000] [--rate 50]
                                     [--profile PREFIX]

(e) Join storm: the sessions generate first (one Celery worker, the demo provider at
`--rate` chunks/s); then every follower connects within one second, from the start of
its session, while it generates. A delivery is live when its chunk was appended after
the follower connected; the table gives the live deliveries' latency in the first 1.5 s
after the storm began and after that, and what was lost or repeated (each follower must
get every chunk once: backlog, then live).

(f) Reconnect storm: `--reconnect` followers (10 a session) on one API process, live;
then the API's processes are killed with SIGKILL and started again on the same port.
Every follower reconnects by itself with `?after=<last cursor>` (retrying every 50 ms
while the port is closed). Measured from when the new API answers `/healthz`: the time
until every follower has had a live chunk again, and the latency of the deliveries in
the 5 s after; and nothing lost or repeated over the whole run.

With `--profile`, py-spy records the API's worker process in each join storm's first
1.5 s into `PREFIX-<sessions>x<followers>.txt` (`bench/pyspy.py`).

Clients: raw sockets under one `epoll` per process (bench/wsclient.py's frame reader),
non-blocking connects and handshakes, in two processes.
"""

from __future__ import annotations

import argparse
import errno
import multiprocessing
import os
import select
import socket
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import pyspy
from bench.followers import CLIENT_PROCESSES, api_env
from bench.procstat import cpu_s, family, machine_busy_s, run_delay_s
from bench.stats import percentiles
from bench.wsclient import frames, merge_tallies, upgrade_request
from rstreams.localredis import LocalRedis
from tests import client
from tests.procs import Api, Worker

_ID = b'"id":"'
_CHUNK = b'{"type":"chunk","id":"'
_INDEX = b'"index":'
_TERMINAL = (b'{"type":"done"', b'{"type":"error"', b'{"type":"cancelled"')
_PONG_EMPTY = bytes([0x8A, 0x80, 0, 0, 0, 0])
_RETRY_MS = 50


@dataclass
class StormTally:
    """What one client process saw: live deliveries as (receive time, latency) in ms."""

    received_ms: array = field(default_factory=lambda: array("d"))
    latencies_ms: array = field(default_factory=lambda: array("d"))
    chunks: int = 0
    duplicates: int = 0
    gaps: int = 0
    ended: int = 0
    reconnects: int = 0
    # Per follower that reconnected: when it had its first live chunk again (ms).
    live_again_ms: list[float] = field(default_factory=list)
    # Per follower: from asking for its first connection to its first chunk (ms).
    joins_ms: array = field(default_factory=lambda: array("d"))
    unfinished: int = 0

    def add(self, other: StormTally) -> None:
        """Merge another process's tally."""
        self.received_ms.extend(other.received_ms)
        self.latencies_ms.extend(other.latencies_ms)
        self.chunks += other.chunks
        self.duplicates += other.duplicates
        self.gaps += other.gaps
        self.ended += other.ended
        self.reconnects += other.reconnects
        self.live_again_ms += other.live_again_ms
        self.joins_ms.extend(other.joins_ms)
        self.unfinished += other.unfinished


class _Conn:
    """One follower: its session's path, its cursor, its socket and where it stands."""

    def __init__(self, path: str, due_s: float) -> None:
        self.path = path
        self.due_s = due_s  # when to (re)connect
        self.cursor = b""
        self.next_index = 0
        self.sock: socket.socket | None = None
        self.state = "idle"  # idle, connecting, handshake, open, done
        self.buf = bytearray()
        self.opened_ms = 0.0  # when the current connection was asked for
        self.was_dropped = False
        self.live_again_ms = 0.0


class Protocol:
    """How a follower asks for its stream and reads it: the product's WebSocket here,
    the peer's plain HTTP text in bench/peer.py."""

    ok = b"HTTP/1.1 101"  # the answer's head starts so when the follow is accepted

    def request(self, host: str, port: int, c: _Conn) -> bytes:
        return upgrade_request(
            host, port, c.path + (f"?after={c.cursor.decode()}" if c.cursor else "")
        )

    def read(self, c: _Conn, tally: StormTally, now_ms: float) -> bool:
        """Take what `c.buf` holds whole; True once the server has closed the follow."""
        for opcode, payload in frames(c.buf):
            if opcode == 1:
                at = payload.find(_ID)
                if at >= 0:
                    c.cursor = payload[at + 6 : payload.index(b'"', at + 6)]
                if payload.startswith(_CHUNK):
                    appended_ms = int(c.cursor[: c.cursor.index(b"-")])
                    at = payload.index(_INDEX) + len(_INDEX)
                    index = int(payload[at : payload.index(b",", at)])
                    _count(c, tally, index, appended_ms, now_ms)
                elif payload.startswith(_TERMINAL):
                    tally.ended += 1
                    c.state = "done"
            elif opcode == 9:
                try:
                    assert c.sock is not None
                    c.sock.sendall(_PONG_EMPTY)
                except OSError:
                    pass
            elif opcode == 8:
                return True  # 1012 from a stopping API, or 1000 after the end
        return False

    def ended(self, c: _Conn, tally: StormTally) -> None:
        """The server closed the connection (after `read`)."""


def _count(c: _Conn, tally: StormTally, index: int, appended_ms: float, now_ms: float) -> None:
    """Tally chunk `index`, appended at `appended_ms`, as `c` received it at `now_ms`."""
    if not c.next_index and not c.was_dropped:
        tally.joins_ms.append(now_ms - c.opened_ms)  # its first chunk: the join is done
    if index == c.next_index:
        tally.chunks += 1
        c.next_index += 1
    elif index < c.next_index:
        tally.duplicates += 1
    else:
        tally.gaps += index - c.next_index
        tally.chunks += 1
        c.next_index = index + 1
    if appended_ms >= c.opened_ms:  # live, not backlog
        tally.received_ms.append(now_ms)
        tally.latencies_ms.append(now_ms - appended_ms)
        if c.was_dropped and not c.live_again_ms:
            c.live_again_ms = now_ms
            tally.live_again_ms.append(now_ms)


def storm(
    host: str,
    port: int,
    paths: list[str],
    start_s: float,
    spread_s: float,
    timeout_s: float,
    protocol: Protocol | None = None,
) -> StormTally:
    """Connect follower k of `paths` at `start_s + k * spread_s / len(paths)` (wall clock),
    follow each to its terminal event, reconnecting from its cursor whenever it drops."""
    protocol = protocol or Protocol()
    conns = [_Conn(p, start_s + k * spread_s / len(paths)) for k, p in enumerate(paths)]
    by_fd: dict[int, _Conn] = {}
    poller = select.epoll()
    tally = StormTally()
    deadline = time.time() + timeout_s
    waiting = sorted(conns, key=lambda c: c.due_s)

    def drop(c: _Conn) -> None:
        if c.sock is not None:
            fd = c.sock.fileno()
            by_fd.pop(fd, None)
            try:
                poller.unregister(fd)
            except (OSError, ValueError):
                pass
            c.sock.close()
            c.sock = None
        if c.state == "done":
            return
        c.state = "idle"
        c.was_dropped = True
        c.live_again_ms = 0.0
        c.due_s = time.time() + _RETRY_MS / 1000
        waiting.append(c)

    while time.time() < deadline and any(c.state != "done" for c in conns):
        now_s = time.time()
        if waiting:
            due = [c for c in waiting if c.due_s <= now_s]
            if due:
                waiting[:] = [c for c in waiting if c.due_s > now_s]
                for c in due:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    err = sock.connect_ex((host, port))
                    c.sock, c.state, c.buf = sock, "connecting", bytearray()
                    c.opened_ms = now_s * 1000
                    if err not in (0, errno.EINPROGRESS):
                        drop(c)
                        continue
                    by_fd[sock.fileno()] = c
                    poller.register(sock.fileno(), select.EPOLLOUT | select.EPOLLIN)
        for fd, _mask in poller.poll(0.005 if waiting else 0.5):
            c = by_fd.get(fd)
            if c is None or c.sock is None:
                continue
            if c.state == "connecting":
                if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    drop(c)
                    continue
                try:
                    c.sock.sendall(protocol.request(host, port, c))
                except OSError:
                    drop(c)
                    continue
                c.state = "handshake"
                poller.modify(fd, select.EPOLLIN)
                continue
            try:
                data = c.sock.recv(1 << 18)
            except BlockingIOError:
                continue
            except OSError:
                drop(c)
                continue
            now_ms = time.time() * 1000
            if not data:
                if c.state == "open":
                    protocol.ended(c, tally)
                drop(c)
                continue
            c.buf += data
            if c.state == "handshake":
                end = c.buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                if not c.buf.startswith(protocol.ok):
                    drop(c)  # refused (the API starting up): try again
                    continue
                del c.buf[: end + 4]
                c.state = "open"
                if c.was_dropped:
                    tally.reconnects += 1
            closed = protocol.read(c, tally, now_ms)
            if closed or c.state == "done":
                drop(c)
    tally.unfinished = sum(1 for c in conns if c.state != "done")
    for c in conns:
        if c.sock is not None:
            c.sock.close()
    return tally


def _child(args: tuple[Any, ...], out: Any) -> None:
    try:
        out.send(storm(*args))
    except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
        out.send(e)


class Storm:
    """`storm` over `processes` client processes, the paths dealt out between them."""

    def __init__(
        self,
        port: int,
        paths: list[str],
        start_s: float,
        spread_s: float,
        timeout_s: float,
        protocol: Protocol | None = None,
    ):
        ctx = multiprocessing.get_context("fork")
        self.procs, self.results = [], []
        for k in range(CLIENT_PROCESSES):
            share = paths[k::CLIENT_PROCESSES]
            out_r, out_w = ctx.Pipe(duplex=False)
            args = ("127.0.0.1", port, share, start_s, spread_s, timeout_s, protocol)
            proc = ctx.Process(target=_child, args=(args, out_w), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.results.append(out_r)

    def wait(self) -> StormTally:
        """Every process's tally, merged."""
        return merge_tallies(self.results, self.procs, StormTally())


def _quantiles(values: list[float]) -> tuple[float, float]:
    q = percentiles(values)
    return q[49], q[98]


def _storm_env(
    redis_url: str, rate: float, sessions: int, chunks: int, web_workers: int = 1
) -> dict[str, str]:
    """The gevent API's (`web_workers` processes) and the worker's environment for a
    storm of `sessions` answers of `chunks` chunks at `rate` a second."""
    return api_env(
        redis_url,
        "gevent",
        web_workers,
        DEMO_TOKENS_PER_S=str(rate),
        WORKER_CONCURRENCY=str(max(sessions, 10)),
        MAX_TOKENS_CAP=str(max(chunks, 8192)),
    )


class CpuWindow:
    """What a process (and its children) used of the machine from `start_s` for
    `length_s`, read from /proc by a thread of its own while the caller waits on something
    else: its cores, the time it waited for a core (s/s), and the cores the whole machine
    was busy. `others`: the processes that share the machine with it, by name (the
    worker, Redis, the clients), whose cores are measured too (`others_cores`)."""

    def __init__(
        self, pid: int, start_s: float, length_s: float, others: dict[str, list[int]] | None = None
    ) -> None:
        self.cores = self.waited = self.machine = float("nan")
        self.others = others or {}
        self.others_cores = {name: float("nan") for name in self.others}
        self._thread = threading.Thread(
            target=self._measure, args=(pid, start_s, length_s), daemon=True
        )
        self._thread.start()

    def _sample(self, pid: int) -> list[float]:
        others = [sum(cpu_s(p) for p in pids) for pids in self.others.values()]
        return [cpu_s(pid), run_delay_s(pid), machine_busy_s(), *others]

    def _measure(self, pid: int, start_s: float, length_s: float) -> None:
        time.sleep(max(0.0, start_s - time.time()))
        before = self._sample(pid)
        time.sleep(max(0.0, start_s + length_s - time.time()))
        after = self._sample(pid)
        self.cores, self.waited, self.machine, *others = (
            (b - a) / length_s for a, b in zip(before, after, strict=True)
        )
        self.others_cores = dict(zip(self.others, others, strict=True))

    def result(self) -> CpuWindow:
        """The figures, once the window has passed."""
        self._thread.join()
        return self


def join_storm(
    sessions: int,
    followers: int,
    *,
    rate: float,
    logs: Path,
    profile: Path | None = None,
    web_workers: int = 1,
) -> dict[str, Any]:
    """(e) One join storm: its figures (`profile`: py-spy's record of the API's (last)
    worker process in the storm's first `EARLY_S`, into that file)."""
    chunks = int(rate * 8)  # 8 s of generation: the storm, then steady state
    server = LocalRedis().start()
    env = _storm_env(server.url, rate, sessions, chunks, web_workers)
    api = Api(env, logs, name=f"api-join-{sessions}x{followers}").start()
    worker = Worker(env, logs, name=f"worker-join-{sessions}x{followers}").start()
    watcher = redis.Redis.from_url(server.url, decode_responses=True)
    spy: pyspy.Recording | None = None
    try:
        ids = [
            client.create(api.url, prompt=f"storm {n}", max_tokens=chunks)["sessionId"]
            for n in range(sessions)
        ]
        deadline = time.monotonic() + 30
        while not all(client.info(api.url, i)["status"] == "running" for i in ids):
            assert time.monotonic() < deadline, "the sessions did not start"
            time.sleep(0.1)
        paths = [f"/api/streams/{sid}/ws" for _ in range(followers) for sid in ids]
        assert api.proc is not None and worker.proc is not None and server.proc is not None
        if profile is not None:
            spy = pyspy.attach(family(api.proc.pid)[-1], profile)
        cpu_before = cpu_s(api.proc.pid)
        start_s = time.time() + 0.3  # the client processes are up by then
        if spy is not None:
            threading.Timer(start_s + EARLY_S - time.time(), spy.stop).start()
        clients = Storm(api.port, paths, start_s, 1.0, chunks / rate + 60)
        others = {
            "worker": [worker.proc.pid],
            "redis": [server.proc.pid],
            "clients": [p.pid for p in clients.procs if p.pid is not None],
        }
        early_cpu = CpuWindow(api.proc.pid, start_s, EARLY_S, others)
        tally = clients.wait()
        api_cpu = cpu_s(api.proc.pid) - cpu_before
        figures = join_figures(tally, sessions, followers, chunks, start_s, early_cpu.result())
        return {**figures, "api_cpu_s": api_cpu}
    finally:
        if spy is not None:
            spy.stop()
        worker.stop()
        api.stop()
        watcher.close()
        server.close()


def kill_api(api: Api) -> None:
    """SIGKILL gunicorn's worker and master at once, as a crash of the host would."""
    assert api.proc is not None
    for pid in reversed(family(api.proc.pid)):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    api.proc.wait()


def reconnect_storm(followers: int, *, rate: float, logs: Path) -> dict[str, Any]:
    """(f) `followers` live followers (10 a session), the API killed and started again."""
    sessions = max(1, followers // 10)
    steady_s, after_s = 3.0, 5.0
    connect_s = followers / 500  # about how long the connects take
    chunks = int(rate * (connect_s + steady_s + after_s + 6))
    server = LocalRedis().start()
    env = _storm_env(server.url, rate, sessions, chunks)
    api = Api(env, logs, name=f"api-reconnect-{followers}").start()
    worker = Worker(env, logs, name=f"worker-reconnect-{followers}").start()
    try:
        ids = [
            client.create(api.url, prompt=f"reconnect {n}", max_tokens=chunks)["sessionId"]
            for n in range(sessions)
        ]
        paths = [f"/api/streams/{sid}/ws" for _ in range(10) for sid in ids]
        start_s = time.time() + 0.3
        clients = Storm(api.port, paths, start_s, connect_s, chunks / rate + 60)
        time.sleep(0.3 + connect_s + steady_s)
        killed_s = time.time()
        kill_api(api)
        api = Api(env, logs, name=f"api-reconnect-{followers}-again", port=api.port)
        api.start()
        listening_ms = time.time() * 1000
        return reconnect_figures(
            clients.wait(), len(paths), chunks, killed_s, listening_ms, after_s
        )
    finally:
        worker.stop()
        api.stop()
        server.close()


EARLY_S = 1.5  # (e): the storm's first seconds, from the first join


def join_figures(
    tally: StormTally,
    sessions: int,
    followers: int,
    chunks: int,
    start_s: float,
    early: CpuWindow,
) -> dict[str, Any]:
    """(e)'s figures from the clients' tally: the followers began joining at `start_s`;
    live deliveries before and after `EARLY_S` from then, and how long the joins took
    (from asking to connect to the first chunk). `early`: what the server that the
    followers joined used of the machine meanwhile."""
    pairs = list(zip(tally.received_ms, tally.latencies_ms, strict=True))
    split_ms = (start_s + EARLY_S) * 1000
    live = [lat for t, lat in pairs if t < split_ms]
    early_p50, early_p99 = _quantiles(live)
    late_p50, late_p99 = _quantiles([lat for t, lat in pairs if t >= split_ms])
    join_p50, join_p99 = _quantiles(list(tally.joins_ms))
    return {
        "load": f"{sessions} x {followers}",
        "early": len(live),
        "early_cores": early.cores,
        "early_waited": early.waited,
        "early_machine": early.machine,
        **{f"early_{name}_cores": cores for name, cores in early.others_cores.items()},
        "join_p50": join_p50,
        "join_p99": join_p99,
        "early_p50": early_p50,
        "early_p99": early_p99,
        "late_p50": late_p50,
        "late_p99": late_p99,
        "lost": sessions * followers * chunks - tally.chunks,
        "repeated": tally.duplicates,
        "unfinished": tally.unfinished,
    }


def reconnect_figures(
    tally: StormTally,
    followers: int,
    chunks: int,
    killed_s: float,
    listening_ms: float,
    after_s: float,
) -> dict[str, Any]:
    """(f)'s figures from the clients' tally: the server was killed at `killed_s` and
    listened again at `listening_ms`; latencies of the `after_s` seconds after that."""
    after = [
        lat
        for t, lat in zip(tally.received_ms, tally.latencies_ms, strict=True)
        if listening_ms <= t < listening_ms + after_s * 1000
    ]
    p50, p99 = _quantiles(after)
    live_again = sorted(tally.live_again_ms)
    return {
        "followers": followers,
        "restart_s": listening_ms / 1000 - killed_s,
        "reconnected": len(live_again),
        "all_live_s": (live_again[-1] - listening_ms) / 1000 if live_again else float("nan"),
        "p50": p50,
        "p99": p99,
        "lost": followers * chunks - tally.chunks,
        "repeated": tally.duplicates,
        "unfinished": tally.unfinished,
    }


JOIN_HEADER = (
    "| sessions x followers | live deliveries in the first 1.5 s | p50 ms | p99 ms "
    "| join p50 ms | join p99 ms | first 1.5 s: server cores | server waited for a core (s/s) "
    "| machine cores busy | worker cores | Redis cores | client cores "
    "| after 1.5 s: p50 ms | p99 ms | lost | repeated | unfinished |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)
# (e)'s other processes, as `join_figures` names them; NaN where a storm has no such one.
OTHERS = ("worker", "redis", "clients")
RECONNECT_HEADER = (
    "| followers | kill to listening s | followers live again | all live again after s "
    "| next 5 s: p50 ms | p99 ms | lost | repeated | unfinished |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def join_row(f: dict[str, Any]) -> str:
    """A Markdown row of `join_storm`'s figures."""
    return (
        f"| {f['load']} | {f['early']:,} | {f['early_p50']:.0f} | {f['early_p99']:.0f} "
        f"| {f['join_p50']:.0f} | {f['join_p99']:.0f} | {f['early_cores']:.2f} "
        f"| {f['early_waited']:.2f} | {f['early_machine']:.2f} "
        + "".join(f"| {f.get(f'early_{name}_cores', float('nan')):.2f} " for name in OTHERS)
        + f"| {f['late_p50']:.0f} "
        f"| {f['late_p99']:.0f} | {f['lost']} | {f['repeated']} | {f['unfinished']} |"
    )


def reconnect_row(f: dict[str, Any]) -> str:
    """A Markdown row of `reconnect_storm`'s figures."""
    return (
        f"| {f['followers']:,} | {f['restart_s']:.1f} | {f['reconnected']:,} "
        f"| {f['all_live_s']:.2f} | {f['p50']:.0f} | {f['p99']:.0f} | {f['lost']} "
        f"| {f['repeated']} | {f['unfinished']} |"
    )


def main() -> None:
    """Run the storms and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", default="50x4,100x10")
    parser.add_argument("--reconnect", type=int, default=1000, help="followers; 0: none")
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--profile", help="py-spy's records of the join storms: PREFIX-<load>.txt")
    parser.add_argument(
        "--web-workers", type=int, default=1, help="gunicorn worker processes (join storms)"
    )
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="rstreams-storms-"))
    if args.joins:
        print(JOIN_HEADER)
        for load in args.joins.split(","):
            s, f = (int(x) for x in load.split("x"))
            profile = Path(f"{args.profile}-{load}.txt") if args.profile else None
            figures = join_storm(
                s, f, rate=args.rate, logs=logs, profile=profile, web_workers=args.web_workers
            )
            print(join_row(figures), flush=True)
    if args.reconnect:
        print(RECONNECT_HEADER)
        print(reconnect_row(reconnect_storm(args.reconnect, rate=args.rate, logs=logs)))


if __name__ == "__main__":
    main()
