"""The workers' and the API's metrics, kept in Redis so that any API process can show them.

On a Procfile host only the web process gets a port, so a worker cannot be scraped. Each
worker process tallies its counts in memory and adds them to one Redis Hash
(`keys.metrics()`) with HINCRBY / HINCRBYFLOAT: the chunk counts ride on the pipeline the
appender sends anyway, the rest (a session's end, a provider error, a reaper takeover)
go out when they happen. The API processes add their deliveries to the same Hash (under
their own field names) and their follower counts to `keys.metrics_followers()`
(`api/metrics.py`). The API renders both at `GET /metrics`. Field names and histogram
buckets are spelled only here.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from typing import Any

import redis

from shared import keys

log = logging.getLogger(__name__)

CHUNKS_APPENDED = "chunks_appended"
REAPER_TAKEOVERS = "reaper_takeovers"
PROVIDER_ERRORS = "provider_errors:"  # + the error's code
GENERATION = "generation_s:"  # + count, sum, or the bucket's upper bound
# The API's: chunk events written to followers, and their delivery latency.
DELIVERED = "delivered:"  # + the transport, ws or sse
DELIVERY_LATENCY = "delivery_latency_s:"  # + sum, or the bucket's upper bound

# Seconds one generation attempt takes, from taking the lease to its terminal event:
# the demo answers in ~10 s, real ones from seconds to minutes.
GENERATION_BUCKETS_S: tuple[float, ...] = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, math.inf)
# Seconds from an entry's append to its write to a live follower.
DELIVERY_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, math.inf
)  # fmt: skip


def bucket_field(upper_s: float, histogram: str = GENERATION) -> str:
    """The Hash field of `histogram`'s bucket ending at `upper_s` (not cumulative)."""
    return f"{histogram}le:{'+Inf' if math.isinf(upper_s) else repr(float(upper_s))}"


class Tally:
    """This process's counts not yet added to Redis; thread-safe."""

    def __init__(self) -> None:
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, field: str, n: float = 1) -> None:
        """Count `n` more of `field`."""
        with self._lock:
            self._pending[field] = self._pending.get(field, 0) + n

    def add_many(self, counts: Mapping[str, float]) -> None:
        """Count several fields at once (under one lock)."""
        with self._lock:
            for field, n in counts.items():
                self._pending[field] = self._pending.get(field, 0) + n

    def provider_error(self, code: str) -> None:
        """Count a generation ended by a provider error of `code`."""
        self.add(PROVIDER_ERRORS + code)

    def generation(self, seconds: float) -> None:
        """Observe one generation attempt's duration."""
        upper = next(b for b in GENERATION_BUCKETS_S if seconds <= b)
        self.add_many(
            {bucket_field(upper): 1, GENERATION + "count": 1, GENERATION + "sum": seconds}
        )

    def queue_into(self, pipe: Any) -> dict[str, float]:
        """Take everything pending and queue its increments on `pipe`; returns what was
        taken, to `restore` if the pipeline fails."""
        with self._lock:
            taken, self._pending = self._pending, {}
        key = keys.metrics()
        for field, n in taken.items():
            if field.endswith(":sum"):
                pipe.hincrbyfloat(key, field, n)
            else:
                pipe.hincrby(key, field, int(n))
        return taken

    def restore(self, taken: Mapping[str, float]) -> None:
        """Put back counts whose increments did not reach Redis."""
        self.add_many(taken)

    def flush(self, r: redis.Redis) -> None:
        """Add everything pending to Redis now; kept for the next try if Redis fails."""
        pipe = r.pipeline(transaction=False)
        taken = self.queue_into(pipe)
        if not taken:
            return
        try:
            pipe.execute()
        except redis.RedisError as e:
            log.debug("metrics not written (%s); kept for the next write", e)
            self.restore(taken)


def count(r: redis.Redis, field: str, n: int = 1) -> None:
    """Add `n` to a counter in Redis at once (for events rarer than chunks)."""
    r.hincrby(keys.metrics(), field, n)


def parse(raw: Mapping[Any, Any]) -> dict[str, float]:
    """The totals from the Hash as HGETALL answered it."""
    out: dict[str, float] = {}
    for field, value in raw.items():
        name = field.decode() if isinstance(field, bytes) else str(field)
        out[name] = float(value)
    return out
