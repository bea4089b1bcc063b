"""What hostile followers cost the API: a ping flood, and readers that stop reading.

    .venv/bin/python -m bench.hostile [--seconds 8] [--stuck 40]

Each part starts its own redis-server and one API process (gunicorn, gevent) and a
session written straight to Redis (no worker), then:
- flood: two clients send masked WebSocket pings as fast as they can write them for
  `--seconds` while a third client times `GET /text` once every 20 ms: without the frame
  budget (`WS_CLIENT_MESSAGES_PER_MIN=0`: pings uncounted, as before the budget), with it
  (120, the default), and with it against clients that connect again whenever they are
  closed. Reports the API's CPU over the flood, the connections the API closed, and the
  third client's p50/p95 latency.
- stuck: `--stuck` SSE readers of a session with an 8 MiB backlog that never read, with
  `WS_SEND_TIMEOUT_S=10`, twice. Reports the API's memory before, while they are stuck,
  and after the send timeout dropped them, and the follower places held in Redis until
  all are given up (and when).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import requests
import websocket

from bench import NO_CALLER_LIMITS
from bench.procstat import cpu_s, rss_mb
from bench.stats import percentiles
from rstreams.localredis import LocalRedis
from shared import keys
from tests.procs import Api, child_env
from tests.test_hostile_followers import live_session_with_backlog, stuck_reader
from tests.test_outages import raw_ws

PINGS = websocket.ABNF.create_frame("", websocket.ABNF.OPCODE_PING).format() * 4096


def flood(port: int, session_id: str, seconds: float, reconnect: bool, closed: Any) -> None:
    """Send pings for `seconds` (and connect again whenever the server closes the socket,
    with `reconnect`), in a process of its own, so that the latency client shares no
    interpreter lock with it."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        sock = raw_ws(port, f"/api/streams/{session_id}/ws")
        try:
            while time.monotonic() < until:
                sock.sendall(PINGS)
        except OSError:
            with closed.get_lock():
                closed.value += 1
        finally:
            sock.close()
        if not reconnect:
            time.sleep(max(0.0, until - time.monotonic()))


def run_flood(
    redis_url: str, logs: Path, seconds: float, budget: str, reconnect: bool
) -> dict[str, float]:
    """One flood against a fresh API with `WS_CLIENT_MESSAGES_PER_MIN=budget`."""
    env = child_env(REDIS_URL=redis_url, WS_CLIENT_MESSAGES_PER_MIN=budget, **NO_CALLER_LIMITS)
    api = Api(env, logs, name=f"flood-{budget}").start()
    try:
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        session_id = live_session_with_backlog(r, chunks=10, size=10)
        text_url = f"{api.url}/api/streams/{session_id}/text"
        latencies: list[float] = []
        closed = multiprocessing.Value("i", 0)
        assert api.proc is not None
        cpu_before = cpu_s(api.proc.pid)
        started = time.monotonic()
        flooders = [
            multiprocessing.Process(
                target=flood,
                args=(api.port, session_id, seconds, reconnect, closed),
            )
            for _ in range(2)
        ]
        for p in flooders:
            p.start()
        with requests.Session() as http:
            while time.monotonic() < started + seconds:
                t0 = time.perf_counter()
                http.get(text_url, timeout=10).raise_for_status()
                latencies.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.02)
        for p in flooders:
            p.join()
        cpu = (cpu_s(api.proc.pid) - cpu_before) / (time.monotonic() - started)
        return {
            "cores": cpu,
            "closed": closed.value,
            "p50_ms": statistics.median(latencies),
            "p95_ms": percentiles(latencies, 20)[18],
        }
    finally:
        api.stop()


def run_stuck(redis_url: str, logs: Path, n: int) -> list[dict[str, float]]:
    """Two rounds of `n` SSE readers that never read: the API's memory before, while they
    are stuck and after the send timeout dropped them, and the places held."""
    env = child_env(
        REDIS_URL=redis_url,
        WS_SEND_TIMEOUT_S="10",
        **{**NO_CALLER_LIMITS, "MAX_FOLLOWERS_PER_SESSION": "500"},
    )
    api = Api(env, logs, name="stuck").start()
    rounds = []
    try:
        assert api.proc is not None
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        # 20,000 chunks of 200 characters: 4 MB, more than the socket buffers hold.
        session_id = live_session_with_backlog(r, chunks=20_000, size=200)
        places = keys.followers(session_id)
        for _ in range(2):
            before = rss_mb(api.proc.pid)
            stuck = [stuck_reader(api.port, session_id, "sse") for _ in range(n)]
            time.sleep(5)  # every reader's writes are blocked by now, none has timed out
            held, places_held = rss_mb(api.proc.pid), r.zcard(places)
            stuck_at = time.monotonic()
            while r.zcard(places) and time.monotonic() < stuck_at + 60:
                time.sleep(0.1)
            rounds.append(
                {
                    "before": before,
                    "stuck": held,
                    "after": rss_mb(api.proc.pid),
                    "places_held": places_held,
                    "places_after": r.zcard(places),
                    "freed_after_s": time.monotonic() - stuck_at + 5,
                }
            )
            for sock in stuck:
                sock.close()
        return rounds
    finally:
        api.stop()


def main() -> None:
    """Run both parts and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--stuck", type=int, default=40)
    args = parser.parse_args()
    server = LocalRedis().start()
    try:
        measure(server.url, args.seconds, args.stuck)
    finally:
        server.close()


def measure(redis_url: str, seconds: float, n_stuck: int) -> None:
    """Both parts against the Redis at `redis_url`."""
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        for budget, reconnect in (("0", False), ("120", False), ("120", True)):
            row = run_flood(redis_url, logs, seconds, budget, reconnect)
            how = "reconnecting" if reconnect else "two connections"
            print(
                f"flood ({how}) WS_CLIENT_MESSAGES_PER_MIN={budget}: "
                f"API {row['cores']:.2f} cores, "
                f"{row['closed']:.0f} connections closed by the API, "
                f"GET /text p50 {row['p50_ms']:.1f} ms p95 {row['p95_ms']:.1f} ms"
            )
        for i, row in enumerate(run_stuck(redis_url, logs, n_stuck), 1):
            print(
                f"stuck SSE readers x{n_stuck}, round {i}: API RSS {row['before']:.1f} MB "
                f"before, {row['stuck']:.1f} MB stuck "
                f"({(row['stuck'] - row['before']) * 1024 / n_stuck:.0f} KB each), "
                f"{row['after']:.1f} MB after the drop; places held "
                f"{row['places_held']:.0f} -> {row['places_after']:.0f} "
                f"{row['freed_after_s']:.1f} s after they connected"
            )


if __name__ == "__main__":
    main()
