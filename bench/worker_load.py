"""Can one worker process carry N concurrent demo generations with chunks on time?

    .venv/bin/python -m bench.worker_load [--sessions 500] [--rate 20] [--chunks 200]

Starts its own redis-server and one worker process (threads pool, WORKER_CONCURRENCY =
sessions), stores N sessions and enqueues them at once through the API's job contract,
then reads every session's stream: chunk i should be written `i / rate` seconds after
chunk 0. Lateness is the entry id's time (a Redis millisecond timestamp) minus that
schedule. Also reports the worker's CPU (user + system) from the enqueue to the last
session's end, in cores (1.0 = one core busy all along), and Redis's. Prints a Markdown row.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import redis
from nanoid import generate as nanoid

from bench.stats import percentiles
from rstreams.localredis import LocalRedis
from shared import keys, store
from shared.jobs import GenerationRequest, Message, enqueue, make_celery
from shared.settings import Settings
from tests.procs import Worker, child_env


def main() -> None:
    """Run the load and print the row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--chunks", type=int, default=200)
    args = parser.parse_args()
    server = LocalRedis().start()
    env = child_env(
        REDIS_URL=server.url,
        DEMO_TOKENS_PER_S=str(args.rate),
        WORKER_CONCURRENCY=str(args.sessions),
    )
    worker = Worker(env, Path(tempfile.mkdtemp(prefix="rstreams-wload-"))).start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    settings = Settings.from_env(env)
    celery = make_celery(settings)
    try:
        ids = []
        for n in range(args.sessions):
            session_id = nanoid()
            request = GenerationRequest(
                model="demo", messages=(Message("user", f"load {n}"),), max_tokens=args.chunks
            )
            store.create_session(r, session_id, request, queue=settings.worker.queue)
            ids.append(session_id)
        assert worker.proc is not None and server.proc is not None
        pids = (worker.proc.pid, server.proc.pid)
        cpu_start, wall_start = [cpu_s(pid) for pid in pids], time.monotonic()
        for session_id in ids:
            enqueue(celery, session_id, settings.worker.queue)
        deadline = time.monotonic() + args.chunks / args.rate + 120
        while any(r.hget(keys.meta(s), "status") not in ("completed", "failed") for s in ids):
            assert time.monotonic() < deadline, "generations did not finish"
            time.sleep(0.5)
        wall_s = time.monotonic() - wall_start
        cores = [(cpu_s(pid) - start) / wall_s for pid, start in zip(pids, cpu_start, strict=True)]
        lateness, starts, failed = [], [], 0
        for session_id in ids:
            if r.hget(keys.meta(session_id), "status") != "completed":
                failed += 1
                continue
            chunk_ms = [
                int(entry_id.split("-")[0])
                for entry_id, fields in r.xrange(keys.events(session_id))
                if fields.get("t") == "chunk"
            ]
            starts.append(chunk_ms[0])
            lateness += [ms - (chunk_ms[0] + i * 1000 / args.rate) for i, ms in enumerate(chunk_ms)]
        spread_s = (max(starts) - min(starts)) / 1000
    finally:
        worker.stop()
        server.close()
    q = percentiles(lateness)
    machine = f"{platform.platform()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}")
    print(
        f"command: python -m bench.worker_load --sessions {args.sessions} --rate {args.rate} "
        f"--chunks {args.chunks}\n"
    )
    print(
        "| sessions | chunks/s each | failed | starts spread (s) | lateness p50 ms "
        "| p99 ms | max ms | CPU worker / Redis (cores) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.sessions} | {args.rate:g} | {failed} | {spread_s:.1f} | {q[49]:.0f} | "
        f"{q[98]:.0f} | {max(lateness):.0f} | {cores[0]:.2f} / {cores[1]:.2f} |"
    )


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
