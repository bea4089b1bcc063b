"""What creating a session costs the API: CPU per `POST /api/streams/generate`.

    .venv/bin/python -m bench.creates [--sessions 200] [--runs 3]

One redis-server and one API process of its own (gunicorn gevent, as the Procfile runs
it; per-caller limits off), no worker: each session is validated, stored and enqueued,
then left queued. After one create to warm the process up, `--sessions` creates one
after another; the API's CPU (gunicorn's master and worker, from /proc, 10 ms ticks) and
the wall time are divided by them. Prints the median of `--runs` runs with the lowest
and highest.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench import NO_CALLER_LIMITS
from bench.procstat import cpu_s
from bench.stats import median_spread
from rstreams.localredis import LocalRedis
from tests import client
from tests.procs import Api, child_env


def run(sessions: int, logs: Path) -> tuple[float, float]:
    """(API CPU ms, wall ms) per create."""
    server = LocalRedis().start()
    env = child_env(
        REDIS_URL=server.url,
        GUNICORN_CMD_ARGS="--workers 1 --worker-class gevent",
        **NO_CALLER_LIMITS,
    )
    api = Api(env, logs, name="api-creates").start()
    try:
        assert api.proc is not None
        client.create(api.url, prompt="warm up")
        cpu_before, started = cpu_s(api.proc.pid), time.perf_counter()
        for n in range(sessions):
            client.create(api.url, prompt=f"create {n}")
        cpu = cpu_s(api.proc.pid) - cpu_before
        wall = time.perf_counter() - started
        return cpu * 1000 / sessions, wall * 1000 / sessions
    finally:
        api.stop()
        server.close()


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="rstreams-creates-"))
    results = [run(args.sessions, logs) for _ in range(args.runs)]
    print("| creates | API CPU ms per create | wall ms per create |\n|---|---|---|")
    print(
        f"| {args.sessions} | {median_spread([r[0] for r in results], '{:.1f}')} "
        f"| {median_spread([r[1] for r in results], '{:.1f}')} |"
    )


if __name__ == "__main__":
    main()
