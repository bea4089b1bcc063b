"""How many chunks per second one session reaches with the demo provider unthrottled.

    .venv/bin/python -m bench.throughput [--sessions 5] [--chunks 8192]

Starts its own redis-server, one Celery worker process (DEMO_TOKENS_PER_S=0) and one API
process, creates sessions one after another, and reads each one's timing from its own
stream: entry ids are Redis millisecond timestamps, so the first chunk's id and the
`done` event's id bound the generation. Then replays each finished session to a new
WebSocket client and times that. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from shared.localredis import LocalRedis
from tests import client
from tests.procs import Api, Worker, child_env


def entry_ms(entry_id: str) -> int:
    """The millisecond part of a stream entry id."""
    return int(entry_id.split("-")[0])


def main() -> None:
    """Run the measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=8192)
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="rstreams-bench-"))
    redis_server = LocalRedis().start()
    env = child_env(
        REDIS_URL=redis_server.url, DEMO_TOKENS_PER_S="0", MAX_TOKENS_CAP=str(args.chunks)
    )
    worker = Worker(env, logs).start()
    api = Api(env, logs).start()
    rates, replays = [], []
    try:
        for n in range(args.sessions):
            created = client.create(api.url, prompt=f"benchmark {n}", max_tokens=args.chunks)
            session_id = created["sessionId"]
            client.wait_terminal(api.url, session_id, timeout_s=300)
            started = time.perf_counter()
            result = client.ws_follow(api.ws_url, session_id)
            replays.append(time.perf_counter() - started)
            chunks = [e for e in result.events if e["type"] == "chunk"]
            assert len(chunks) == args.chunks and result.events[-1]["type"] == "done"
            span_ms = entry_ms(result.events[-1]["id"]) - entry_ms(chunks[0]["id"])
            rates.append(args.chunks / (span_ms / 1000))
    finally:
        api.stop()
        worker.stop()
        redis_server.close()

    machine = f"{platform.platform()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}")
    print(f"redis-server: {redis_server.binary}")
    print(f"sessions: {args.sessions} one after another, {args.chunks} demo chunks each\n")
    print("| measure | median | min | max |")
    print("|---|---|---|---|")
    print(
        f"| chunks/s one session (worker -> Redis) | {statistics.median(rates):,.0f} "
        f"| {min(rates):,.0f} | {max(rates):,.0f} |"
    )
    print(
        f"| replay of {args.chunks} chunks to a new WebSocket client (ms) "
        f"| {statistics.median(replays) * 1000:,.0f} | {min(replays) * 1000:,.0f} "
        f"| {max(replays) * 1000:,.0f} |"
    )


if __name__ == "__main__":
    main()
