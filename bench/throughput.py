"""One session's append rate, and replay of a long finished session to a new client.

    .venv/bin/python -m bench.throughput [--sessions 5] [--chunks 10000]

Starts its own redis-server, one Celery worker process (DEMO_TOKENS_PER_S=0) and one API
process, creates sessions one after another, and reads each one's timing from its own
stream: entry ids are Redis millisecond timestamps, so the first chunk's id and the
`done` event's id bound the generation. Then replays each finished session to a new
WebSocket client (bench/wsclient.py's raw reader) and times it from the connect call to
the `done` frame. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench import NO_CALLER_LIMITS
from bench.wsclient import open_ws
from rstreams.localredis import LocalRedis
from tests import client
from tests.procs import Api, Worker, child_env


def entry_ms(entry_id: str) -> int:
    """The millisecond part of a stream entry id."""
    return int(entry_id.split("-")[0])


def replay_s(port: int, session_id: str) -> tuple[float, int]:
    """Seconds from connecting to the `done` frame, and the bytes received."""
    started = time.perf_counter()
    sock = open_ws("127.0.0.1", port, f"/api/streams/{session_id}/ws")
    received = 0
    tail = b""
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed before the done frame")
            received += len(data)
            tail = (tail + data)[-4096:]
            if b'{"type":"done"' in tail:
                return time.perf_counter() - started, received
    finally:
        sock.close()


def measure(sessions: int, chunks: int, logs: Path) -> dict[str, list[float]]:
    """Append rates (chunks/s) and replay times (ms) of `sessions` sessions of `chunks`."""
    redis_server = LocalRedis().start()
    env = child_env(
        REDIS_URL=redis_server.url,
        DEMO_TOKENS_PER_S="0",
        MAX_TOKENS_CAP=str(chunks),
        **NO_CALLER_LIMITS,
    )
    worker = Worker(env, logs, name="worker-throughput").start()
    api = Api(env, logs, name="api-throughput").start()
    rates, replays = [], []
    try:
        for n in range(sessions):
            created = client.create(api.url, prompt=f"benchmark {n}", max_tokens=chunks)
            session_id = created["sessionId"]
            client.wait_terminal(api.url, session_id, timeout_s=300)
            replays.append(replay_s(api.port, session_id)[0] * 1000)
            result = client.ws_follow(api.ws_url, session_id)
            events = result.events
            chunk_events = [e for e in events if e["type"] == "chunk"]
            assert len(chunk_events) == chunks and events[-1]["type"] == "done"
            span_ms = entry_ms(events[-1]["id"]) - entry_ms(chunk_events[0]["id"])
            rates.append(chunks / (span_ms / 1000))
    finally:
        api.stop()
        worker.stop()
        redis_server.close()
    return {"rates": rates, "replays_ms": replays}


def main() -> None:
    """Run the measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=10000)
    args = parser.parse_args()
    figures = measure(args.sessions, args.chunks, Path(tempfile.mkdtemp(prefix="rstreams-")))
    rates, replays = figures["rates"], figures["replays_ms"]
    print("| measure | median | min | max |")
    print("|---|---|---|---|")
    print(
        f"| chunks/s one session (worker -> Redis) | {statistics.median(rates):,.0f} "
        f"| {min(rates):,.0f} | {max(rates):,.0f} |"
    )
    print(
        f"| replay of {args.chunks:,} chunks to a new WebSocket client (ms) "
        f"| {statistics.median(replays):,.0f} | {min(replays):,.0f} | {max(replays):,.0f} |"
    )


if __name__ == "__main__":
    main()
