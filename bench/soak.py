"""A larger chaos soak: hundreds of sessions, followers that drop at random, and one API
kill -9, one worker kill -9 and one Redis restart during the run.

    .venv/bin/python -m bench.soak [--sessions 200] [--followers 3] [--chunks 600] [--rate 20]

Prints the figures as Markdown for docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

from bench import NO_CALLER_LIMITS
from rstreams.localredis import LocalRedis
from tests.chaos import Cluster, run_chaos
from tests.procs import child_env


def main() -> None:
    """Run the soak and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--followers", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=600)
    parser.add_argument("--redis-down-s", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-gap-s", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="demo chunks/s per session")
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="rstreams-soak-"))
    redis_server = LocalRedis().start()
    env = child_env(
        REDIS_URL=redis_server.url,
        CELERY_QUEUE="chaos",
        LEASE_TTL_S="5",
        REAPER_INTERVAL_S="1",
        MAX_ATTEMPTS="6",
        DEMO_TOKENS_PER_S=str(args.rate),
        XREAD_BLOCK_MS="1000",
        WORKER_CONCURRENCY="400",
        REDIS_MAX_CONNECTIONS="4000",
        **NO_CALLER_LIMITS,
    )
    cluster = Cluster(env, logs, redis_server)
    cluster.add_api()
    cluster.add_api()
    cluster.add_worker()
    cluster.add_worker()
    try:
        report = run_chaos(
            cluster,
            sessions=args.sessions,
            followers_per_session=args.followers,
            chunks=args.chunks,
            seed=args.seed,
            redis_down_s=args.redis_down_s,
            deadline_s=600,
            fault_gap_s=args.fault_gap_s,
        )
    finally:
        cluster.stop()
        redis_server.close()
    pauses = sorted(report.takeover_pauses_s)
    machine = f"{platform.platform()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}")
    print(
        f"command: python -m bench.soak --sessions {args.sessions} --followers {args.followers} "
        f"--chunks {args.chunks} --redis-down-s {args.redis_down_s} --seed {args.seed} "
        f"--fault-gap-s {args.fault_gap_s} --rate {args.rate}\n"
    )
    print("| figure | value |\n|---|---|")
    print(f"| sessions | {report.sessions} ({args.chunks} chunks each) |")
    print(f"| followers | {report.followers} (2 WebSocket, 1 SSE per session) |")
    print(f"| connections (drops and resumes included) | {report.reconnects} |")
    print(f"| faults injected | {'; '.join(report.faults)} |")
    for name, seconds in report.recovery_s.items():
        print(f"| {name.replace('_', ' ')} (s) | {seconds:.2f} |")
    print(f"| sessions resumed by another worker | {len(pauses)} |")
    if pauses:
        print(
            f"| pause readers saw at a takeover, median / max (s) "
            f"| {statistics.median(pauses):.2f} / {pauses[-1]:.2f} |"
        )
    print(
        "| longest pause between two chunks of a session not taken over "
        f"(the Redis restart) (s) | {report.longest_pause_s:.2f} |"
    )
    print(f"| run time (s) | {report.duration_s:.1f} |")
    print(f"| problems (lost, repeated, out of order, unfinished) | {len(report.problems)} |")
    for problem in report.problems[:20]:
        print(f"- {problem}")


if __name__ == "__main__":
    main()
