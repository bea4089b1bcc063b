"""Delivery through the whole product: worker -> Redis -> API -> WebSocket client.

    .venv/bin/python -m bench.followers [--loads 1x1,100x1,100x10] [--rate 50]
        [--chunks 250] [--worker-class gevent|gthread] [--idle N]

For each load (sessions x followers) it starts its own redis-server and one API process
(gunicorn, one worker process of `--worker-class`), creates the sessions, connects every
follower (WebSocket, bench/wsclient.py: raw sockets under epoll in two client processes)
before any worker runs, then starts one Celery worker with the demo provider at `--rate`
chunks/s, so every chunk is delivered live. Latency is the client's receive time minus
the chunk's cursor (a Redis millisecond timestamp on the same machine): 1 ms resolution.
`--idle N` instead measures the API's memory and Redis connections with N followers of
sessions that no worker generates.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench import NO_CALLER_LIMITS
from bench.procstat import cpu_s, rss_mb, run_delay_s
from bench.stats import percentiles
from bench.wsclient import Followers
from rstreams.localredis import LocalRedis
from tests import client
from tests.procs import Api, Worker, child_env

CLIENT_PROCESSES = 2


def api_env(
    redis_url: str, worker_class: str, web_workers: int = 1, **extra: str
) -> dict[str, str]:
    """The API's environment for a worker class (gthread gets a thread per follower) and a
    number of gunicorn worker processes."""
    cmd_args = f"--workers {web_workers} --worker-class gevent"
    if worker_class == "gthread":
        cmd_args = f"--workers {web_workers} --worker-class gthread --threads 1200"
    return child_env(
        REDIS_URL=redis_url,
        WEB_WORKER_CONNECTIONS="5000",
        GUNICORN_CMD_ARGS=cmd_args,
        **NO_CALLER_LIMITS,
        **extra,
    )


def run_load(
    sessions: int,
    followers: int,
    *,
    rate: float,
    chunks: int,
    worker_class: str = "gevent",
    web_workers: int = 1,
    logs: Path,
) -> dict[str, Any]:
    """One load: returns its figures."""
    server = LocalRedis().start()
    env = api_env(
        server.url,
        worker_class,
        web_workers,
        DEMO_TOKENS_PER_S=str(rate),
        WORKER_CONCURRENCY=str(max(sessions, 10)),
        MAX_TOKENS_CAP=str(max(chunks, 8192)),
    )
    api = Api(env, logs, name=f"api-{sessions}x{followers}-{worker_class}").start()
    worker = None
    watcher = redis.Redis.from_url(server.url)
    try:
        ids = [
            client.create(api.url, prompt=f"latency {n}", max_tokens=chunks)["sessionId"]
            for n in range(sessions)
        ]
        paths = [f"/api/streams/{sid}/ws" for sid in ids for _ in range(followers)]
        clients = Followers(
            "127.0.0.1", api.port, paths, CLIENT_PROCESSES, timeout_s=chunks / rate + 120
        )
        clients.wait_connected()
        time.sleep(1)  # every follower has its queued status and waits live
        redis_pid = int(watcher.info("server")["process_id"])
        redis_clients = int(watcher.info("clients")["connected_clients"]) - 1
        assert api.proc is not None
        before = {
            "api": cpu_s(api.proc.pid),
            "redis": cpu_s(redis_pid),
            "api_wait": run_delay_s(api.proc.pid),
        }
        started = time.time()  # the worker's start: CPU figures run from here
        worker = Worker(env, logs, name=f"worker-{sessions}x{followers}").start()
        assert worker.proc is not None
        worker_cpu = 0.0
        tally = None
        while tally is None:
            worker_cpu = cpu_s(worker.proc.pid)  # sampled while it runs
            if clients.is_done():
                tally = clients.wait()
            else:
                time.sleep(0.2)
        # Rates over the time chunks arrived; CPU over the whole run, per second of it.
        wall = max(0.001, (tally.last_ms - tally.first_ms) / 1000)
        run_s = max(0.001, tally.last_ms / 1000 - started)
        latencies = tally.latencies_ms
        q = percentiles(latencies)
        api_cpu_s = cpu_s(api.proc.pid) - before["api"]
        return {
            "load": f"{sessions} x {followers}",
            "deliveries": len(latencies),
            "lost": sessions * followers * chunks - tally.chunks,
            "repeated": tally.duplicates,
            "ended": tally.ended,
            "p50": q[49],
            "p99": q[98],
            "max": max(latencies, default=0.0),
            "per_s": len(latencies) / wall,
            "api_cpu": api_cpu_s / run_s,
            "worker_cpu": worker_cpu / run_s,
            "redis_cpu": (cpu_s(redis_pid) - before["redis"]) / run_s,
            "client_cpu": tally.cpu_s / run_s,
            "per_api_core": len(latencies) / max(api_cpu_s, 0.01),
            # Seconds per second the API's threads were ready to run but waited for a core
            # (summed over its threads: gthread's can exceed 1).
            "api_wait": (run_delay_s(api.proc.pid) - before["api_wait"]) / run_s,
            "redis_clients": redis_clients,
        }
    finally:
        if worker:
            worker.stop()
        api.stop()
        watcher.close()
        server.close()


def idle_load(n: int, *, worker_class: str = "gevent", logs: Path) -> dict:
    """`n` WebSocket followers of sessions no worker generates: the API's memory and
    Redis connections while they wait."""
    server = LocalRedis().start()
    api = Api(api_env(server.url, worker_class), logs, name=f"api-idle-{n}").start()
    watcher = redis.Redis.from_url(server.url)
    try:
        assert api.proc is not None
        rss_before = rss_mb(api.proc.pid)
        ids = [client.create(api.url, prompt=f"idle {k}")["sessionId"] for k in range(n // 10)]
        paths = [f"/api/streams/{ids[k % len(ids)]}/ws" for k in range(n)]
        clients = Followers("127.0.0.1", api.port, paths, CLIENT_PROCESSES, timeout_s=8)
        clients.wait_connected()
        time.sleep(3)
        figures = {
            "followers": n,
            "rss_before": rss_before,
            "rss": rss_mb(api.proc.pid),
            "redis_connections": int(watcher.info("clients")["connected_clients"]) - 1,
        }
        clients.wait()
        return figures
    finally:
        api.stop()
        watcher.close()
        server.close()


LOAD_HEADER = (
    "| sessions x followers | deliveries | lost | repeated | p50 ms | p99 ms | max ms "
    "| deliveries/s | per API core-second | CPU: API | worker | Redis | clients "
    "| API waited for a core (s/s) | Redis clients |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def load_row(f: dict[str, Any]) -> str:
    """A Markdown row of `run_load`'s figures."""
    return (
        f"| {f['load']} | {f['deliveries']:,} | {f['lost']} | {f['repeated']} | "
        f"{f['p50']:.0f} | {f['p99']:.0f} | {f['max']:.0f} | {f['per_s']:,.0f} | "
        f"{f['per_api_core']:,.0f} | {f['api_cpu']:.2f} | {f['worker_cpu']:.2f} | "
        f"{f['redis_cpu']:.2f} | {f['client_cpu']:.2f} | {f['api_wait']:.2f} | "
        f"{f['redis_clients']} |"
    )


def main() -> None:
    """Run the loads and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-class", default="gevent", choices=["gevent", "gthread"])
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--chunks", type=int, default=250)
    parser.add_argument("--loads", default="1x1,100x1,100x10")
    parser.add_argument("--idle", type=int, default=0, help="only measure N idle followers")
    parser.add_argument("--web-workers", type=int, default=1, help="gunicorn worker processes")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="rstreams-followers-"))
    if args.idle:
        f = idle_load(args.idle, worker_class=args.worker_class, logs=logs)
        print(
            f"{f['followers']} idle followers: API RSS {f['rss_before']:.0f} MB before, "
            f"{f['rss']:.0f} MB with them; Redis connections {f['redis_connections']}"
        )
        return
    print(LOAD_HEADER)
    for load in args.loads.split(","):
        sessions, followers = (int(x) for x in load.split("x"))
        figures = run_load(
            sessions,
            followers,
            rate=args.rate,
            chunks=args.chunks,
            worker_class=args.worker_class,
            web_workers=args.web_workers,
            logs=logs,
        )
        print(load_row(figures), flush=True)


if __name__ == "__main__":
    main()
