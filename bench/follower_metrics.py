"""What a follower's metrics cost on the hot path: one `Follower.sent` per batch.

    .venv/bin/python -m bench.follower_metrics [--batches 100000] [--chunks 10]

Times `sent` for live batches of chunks (each one's latency observed), best of 5 runs,
in microseconds a batch. The process's flusher points at a Redis that is not there: its
writes fail off the hot path, as they would in an outage.
"""

from __future__ import annotations

import argparse
import time

from api import metrics
from api.app import create_app
from shared import store
from shared.settings import RedisSettings, Settings


def run(batches: int, chunks: int, rounds: int = 5) -> float:
    """The best of `rounds` runs: microseconds a batch."""
    app = create_app(Settings(redis=RedisSettings(url="redis://127.0.0.1:1/0")))
    best = float("inf")
    with app.app_context():
        follower = metrics.Follower("ws")
        for _ in range(rounds):
            now_ms = int(time.time() * 1000)
            todo = [
                [
                    store.decode_event(f"{now_ms}-{n}", {"t": "chunk", "i": str(n), "x": "x"})
                    for n in range(i * chunks, (i + 1) * chunks)
                ]
                for i in range(batches)
            ]
            start = time.perf_counter()
            for batch in todo:
                follower.sent(batch)
            best = min(best, (time.perf_counter() - start) / batches * 1e6)
        follower.leave()
    return best


def main() -> None:
    """Print the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=10)
    args = parser.parse_args()
    us = run(args.batches, args.chunks)
    print(f"Follower.sent: {us:.2f} us a batch of {args.chunks} chunks (best of 5)")


if __name__ == "__main__":
    main()
