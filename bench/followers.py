"""Delivery latency from append to WebSocket client, through the whole product.

    .venv/bin/python -m bench.followers [--hub true|false] [--rate 50] [--chunks 250]

For each load (sessions x followers) it starts its own redis-server and API process,
creates the sessions, connects every follower (WebSocket) before any worker runs, then
starts one worker with the demo provider at `--rate` chunks/s, so every chunk is
delivered live. Latency is the client's receive time minus the chunk's stream id (a
Redis millisecond timestamp on the same machine), so it has 1 ms resolution. Prints a
Markdown table with p50/p99/max, losses, deliveries per second from the worker's start
to the last delivery, and the API process's CPU and Redis connections.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis
import websocket

from shared.localredis import LocalRedis
from tests import client
from tests.procs import Api, Worker, child_env

TICKS = os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """`pid` and its children still running (gunicorn's master and its worker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [pid] + [int(p) for p in out.stdout.split()]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its children still running."""
    total = 0
    for p in family(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def follow(
    url: str, latencies: list[float], counts: list[int], i: int, last_ms: list[float]
) -> None:
    """Receive until the terminal event, recording each chunk's latency."""
    ws = websocket.create_connection(url, timeout=60)
    try:
        while True:
            data = ws.recv()
            now_ms = time.time() * 1000
            if not data:
                return
            event = json.loads(data)
            if event["type"] == "chunk":
                latencies.append(now_ms - int(event["id"].split("-")[0]))
                counts[i] += 1
                last_ms[i] = now_ms
            elif event["type"] in ("done", "error", "cancelled"):
                return
    except websocket.WebSocketException:
        return
    finally:
        ws.close()


def run_load(sessions: int, followers: int, args: argparse.Namespace, logs: Path) -> dict:
    """One load: returns its figures."""
    server = LocalRedis().start()
    env = child_env(
        REDIS_URL=server.url,
        DEMO_TOKENS_PER_S=str(args.rate),
        FOLLOWER_HUB=args.hub,
        WORKER_CONCURRENCY="1000",
        WEB_WORKER_CONNECTIONS="5000",
    )
    api = Api(env, logs, name=f"api-{sessions}x{followers}").start()
    worker = None
    try:
        ids = [
            client.create(api.url, prompt=f"latency {n}", max_tokens=args.chunks)["sessionId"]
            for n in range(sessions)
        ]
        latencies: list[float] = []
        counts = [0] * (sessions * followers)
        last_ms = [0.0] * (sessions * followers)
        threads = [
            threading.Thread(
                target=follow,
                args=(
                    f"{api.ws_url}/api/streams/{sid}/ws",
                    latencies,
                    counts,
                    s * followers + k,
                    last_ms,
                ),
                daemon=True,
            )
            for s, sid in enumerate(ids)
            for k in range(followers)
        ]
        for t in threads:
            t.start()
        time.sleep(2)  # every follower connected and waiting
        redis_clients = int(redis.Redis.from_url(server.url).info("clients")["connected_clients"])
        assert api.proc is not None
        cpu_before, wall_before = cpu_s(api.proc.pid), time.monotonic()
        started_ms = time.time() * 1000
        worker = Worker(env, logs, name=f"worker-{sessions}x{followers}").start()
        for t in threads:
            t.join(args.chunks / args.rate + 60)
        cpu = (cpu_s(api.proc.pid) - cpu_before) / (time.monotonic() - wall_before)
        expected = sessions * followers * args.chunks
        q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0] * 99
        return {
            "load": f"{sessions} x {followers}",
            "deliveries": len(latencies),
            "lost": expected - sum(counts),
            "p50": q[49],
            "p99": q[98],
            "max": max(latencies, default=0),
            "per_s": len(latencies) / max(0.001, (max(last_ms) - started_ms) / 1000),
            "api_cpu": cpu,
            "redis_clients": redis_clients,
        }
    finally:
        if worker:
            worker.stop()
        api.stop()
        server.close()


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its children, in MB."""
    total_kb = 0
    for p in family(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024


def idle_load(n: int, args: argparse.Namespace, logs: Path) -> None:
    """`n` WebSocket followers of sessions no worker generates: the API's memory and
    Redis connections while they wait."""
    server = LocalRedis().start()
    env = child_env(REDIS_URL=server.url, FOLLOWER_HUB=args.hub, WEB_WORKER_CONNECTIONS="5000")
    api = Api(env, logs, name=f"api-idle-{n}").start()
    try:
        assert api.proc is not None
        rss_before = rss_mb(api.proc.pid)
        ids = [client.create(api.url, prompt=f"idle {k}")["sessionId"] for k in range(n // 10)]
        sockets = []
        for k in range(n):
            ws = websocket.create_connection(f"{api.ws_url}/api/streams/{ids[k % len(ids)]}/ws")
            ws.recv()  # the queued status: this follower is live and waiting
            sockets.append(ws)
        time.sleep(3)
        info = redis.Redis.from_url(server.url).info("clients")
        print(
            f"| {n} idle WebSocket followers, hub {args.hub} | API RSS {rss_before:.0f} MB "
            f"before, {rss_mb(api.proc.pid):.0f} MB with them | Redis connections "
            f"{int(info['connected_clients']) - 1} |"
        )
        for ws in sockets:
            ws.close()
    finally:
        api.stop()
        server.close()


def main() -> None:
    """Run every load and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", default="true", choices=["true", "false"])
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--chunks", type=int, default=250)
    parser.add_argument("--loads", default="1x1,100x1,100x10")
    parser.add_argument("--idle", type=int, default=0, help="only measure N idle followers")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="rstreams-followers-"))
    if args.idle:
        idle_load(args.idle, args, logs)
        return
    rows = []
    for load in args.loads.split(","):
        sessions, followers = (int(x) for x in load.split("x"))
        rows.append(run_load(sessions, followers, args, logs))
    machine = f"{platform.platform()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}")
    print(
        f"command: python -m bench.followers --hub {args.hub} --rate {args.rate} "
        f"--chunks {args.chunks} --loads {args.loads}\n"
    )
    print(
        "| sessions x followers | deliveries | lost | p50 ms | p99 ms | max ms "
        "| deliveries/s | API CPU (cores) | Redis clients while following |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['load']} | {r['deliveries']:,} | {r['lost']} | {r['p50']:.0f} | "
            f"{r['p99']:.0f} | {r['max']:.0f} | {r['per_s']:,.0f} | {r['api_cpu']:.2f} | "
            f"{r['redis_clients']} |"
        )


if __name__ == "__main__":
    main()
