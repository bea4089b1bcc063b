"""One reaper pass over N active sessions, on a Redis of its own.

Every session is running; 1 in 20 lost its worker (no lease, not written to for a while),
the rest hold a live lease. `.venv/bin/python -m bench.reaper --sessions 1000 5000`
"""

from __future__ import annotations

import argparse
import logging
import time

import redis

from rstreams.localredis import LocalRedis
from shared import keys, store
from shared.jobs import GenerationRequest, Message
from shared.settings import Settings
from worker.reaper import reap_once


def populate(r: redis.Redis, sessions: int, settings: Settings) -> None:
    """Store `sessions` running sessions, 1 in 20 of them with a dead worker."""
    request = GenerationRequest(model="demo", messages=(Message("user", "bench"),))
    long_ago = store.now_ms() - 10 * settings.worker.lease_ttl_s * 1000
    for n in range(sessions):
        session_id = f"bench{n:016d}"
        store.create_session(r, session_id, request, queue="bench")
        if n % 20 == 0:
            r.hset(
                keys.meta(session_id),
                mapping={"status": "running", "updated_ms": long_ago, "enqueued_ms": long_ago},
            )
        else:
            store.acquire_lease(r, session_id, 600_000)
            r.hset(keys.meta(session_id), "status", "running")


def main() -> None:
    """Time one pass for each size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1000, 5000])
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # a line per hand-out would be timed too
    settings = Settings.from_env({})
    server = LocalRedis().start()
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        for sessions in args.sessions:
            r.flushall()
            populate(r, sessions, settings)
            started = time.perf_counter()
            counts = reap_once(r, settings, lambda _sid, _queue: None)
            elapsed = time.perf_counter() - started
            print(f"{sessions} active sessions: one pass {elapsed:.3f} s, {counts}")
    finally:
        server.close()


if __name__ == "__main__":
    main()
