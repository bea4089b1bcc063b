"""`GET /metrics` in Prometheus text format, every row read from Redis: whichever API
process of whichever web dyno answers a scrape, it shows the whole deployment.

The workers' counts: `shared.metrics`. The API's: a follower adds up its deliveries and
latencies and hands them to its process about once a flush interval (METRICS_FLUSH_S)
and when it leaves; each API process has one flusher (a greenlet under gunicorn's gevent
worker, started with the process's first follower, like the hub) that adds what was
handed to it to the metrics Hash in one pipeline, and writes the process's follower
count to `keys.metrics_followers()` when it changes and, while it has followers, every
interval. A scrape sums the counts written recently and drops the others: those of a
process that died without saying goodbye (a clean exit removes its own, `close`).
"""

from __future__ import annotations

import bisect
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import redis
from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from api.backend import backend
from shared import keys, metrics, store
from shared.backoff import ensure_running
from shared.redisconn import run_script

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

TRANSPORTS = ("ws", "sse")
# Floats, ending with +Inf: bisect compares floats faster than a float and an int.
_LATENCY_BOUNDS = [float(b) for b in metrics.DELIVERY_LATENCY_BUCKETS_S]
_LATENCY_FIELDS = [metrics.bucket_field(b, metrics.DELIVERY_LATENCY) for b in _LATENCY_BOUNDS]
_LATENCY_SUM = metrics.DELIVERY_LATENCY + "sum"
# A process's follower count is a dead process's once it is this much older than
# 3 flush intervals (the margin covers clocks a little apart between dynos).
STALE_MARGIN_S = 2.0

# Delete a process's follower count only if it is still the stale value the scrape read.
_DROP_STALE = """
local dropped = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    dropped = dropped + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return dropped
"""


# The least time between two writes of a process's follower count after joins or leaves.
GAUGE_SPACING_S = 0.25


class _Process:
    """This API process's follower metrics not yet in Redis, and its flusher."""

    def __init__(self) -> None:
        self.tally = metrics.Tally()
        self.interval_s = 2.0
        self._followers = dict.fromkeys(TRANSPORTS, 0)
        self._lock = threading.Lock()  # the follower counts, the flusher's start
        self._flushing = threading.Lock()  # one flush at a time
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._r: redis.Redis | None = None
        self._field = ""
        self._written: tuple[int, ...] | None = None  # the count as last written
        self._written_at = 0.0
        self._closed = False

    def start(self, r: redis.Redis, interval_s: float) -> None:
        """Start the flusher if it is not running (cheap when it is)."""
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            self._r = r
            self.interval_s = interval_s
            self._field = f"{socket.gethostname()}:{os.getpid()}"
            self._thread = ensure_running(self._thread, self._run, "metrics-flush")

    def join(self, transport: str) -> None:
        """A follower came: count it, and write the count soon."""
        with self._lock:
            self._followers[transport] += 1
        self._wake.set()

    def leave(self, transport: str) -> None:
        """A follower left."""
        with self._lock:
            self._followers[transport] -= 1
        self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval_s)
            # Joins and leaves wake the flusher: one write every `GAUGE_SPACING_S` carries
            # a storm of them, not one round trip each.
            time.sleep(max(0.0, self._written_at + GAUGE_SPACING_S - time.time()))
            self._wake.clear()
            if self._closed:
                return
            try:
                self.flush()
            except Exception:  # the flusher must outlive any surprise
                log.exception("metrics flush failed")

    def flush(self, *, final: bool = False) -> None:
        """Add the counts handed over since the last flush to Redis and write this
        process's follower count (remove it if `final`), in one pipeline. What does not
        reach Redis stays for the next flush."""
        r = self._r
        if r is None:
            return
        with self._flushing:
            with self._lock:
                count = tuple(self._followers[t] for t in TRANSPORTS)
            now = time.time()
            # While it has followers the count is rewritten every interval: a scrape
            # takes a count not rewritten for a while for a dead process's.
            gauge_due = final or count != self._written
            gauge_due = gauge_due or (any(count) and now - self._written_at >= self.interval_s / 2)
            pipe = r.pipeline(transaction=False)
            taken = self.tally.queue_into(pipe)
            if not taken and not gauge_due:
                return
            if gauge_due:
                if any(count) and not final:
                    ms = int(now * 1000)
                    value = " ".join(str(n) for n in count) + f" {ms}"
                    pipe.hset(keys.metrics_followers(), self._field, value)
                else:
                    pipe.hdel(keys.metrics_followers(), self._field)
            try:
                results = pipe.execute(raise_on_error=False)
            except redis.RedisError as e:
                log.debug("API metrics not written (%s); kept for the next flush", e)
                self.tally.restore(taken)
                return
            failed = {
                field: n
                for (field, n), result in zip(taken.items(), results, strict=False)
                if isinstance(result, Exception)
            }
            if failed:
                log.debug("API metrics not written (%s); kept", next(iter(failed)))
                self.tally.restore(failed)
            if gauge_due and not isinstance(results[-1], Exception):
                self._written, self._written_at = count, now

    def close(self) -> None:
        """The process is exiting: stop the flusher, flush, remove the follower count."""
        self._closed = True
        self._wake.set()
        try:
            self.flush(final=True)
        except Exception:  # an exit must go on
            log.exception("last metrics flush failed")


_PROCESS = _Process()


def close() -> None:
    """Flush this process's metrics one last time (gunicorn's `worker_exit`)."""
    _PROCESS.close()


class Follower:
    """One follower's metrics: counted in `rstreams_followers` until `leave`."""

    def __init__(self, transport: str) -> None:
        b = backend()
        _PROCESS.start(b.redis, b.settings.api.metrics_flush_s)
        self._transport = transport
        self._delivered_field = metrics.DELIVERED + transport
        self._flush_s = _PROCESS.interval_s
        now = time.time()
        # Entries appended before the follower came are a replay, not a delivery delay.
        self._since_ms = int(now * 1000)
        self._flush_at = now + self._flush_s
        self._chunks = 0
        self._latency_counts = [0] * len(_LATENCY_BOUNDS)  # per bucket, not cumulative
        self._latency_sum = 0.0
        _PROCESS.join(transport)
        self._is_in = True

    def sent(self, batch: store.Batch) -> None:
        """Count a batch written to the follower (called once per batch)."""
        first, last = batch[0], batch[-1]
        if first["type"] == "chunk" and last["type"] == "chunk":
            # Chunk indices run on without gaps: no loop over a batch of thousands.
            self._chunks += last["index"] - first["index"] + 1
        else:
            self._chunks += sum(1 for event in batch if event["type"] == "chunk")
        now = time.time()
        appended_ms = int(first["id"].partition("-")[0])
        if appended_ms >= self._since_ms:
            latency = max(0.0, now - appended_ms / 1000)
            self._latency_counts[bisect.bisect_left(_LATENCY_BOUNDS, latency)] += 1
            self._latency_sum += latency
        if now >= self._flush_at:
            self.flush()

    def flush(self) -> None:
        """Hand what was counted since the last flush to the process's flusher (no Redis
        call per batch: the flusher writes every process's counts at once)."""
        self._flush_at = time.time() + self._flush_s
        counts: dict[str, float] = {}
        if self._chunks:
            counts[self._delivered_field] = self._chunks
            self._chunks = 0
        if self._latency_sum or any(self._latency_counts):
            for field, n in zip(_LATENCY_FIELDS, self._latency_counts, strict=True):
                if n:
                    counts[field] = n
            counts[_LATENCY_SUM] = self._latency_sum
            self._latency_counts = [0] * len(_LATENCY_BOUNDS)
            self._latency_sum = 0.0
        if counts:
            _PROCESS.tally.add_many(counts)

    def leave(self) -> None:
        """The follower is gone: flush its counts, leave the gauge (idempotent)."""
        if self._is_in:
            self._is_in = False
            self.flush()
            _PROCESS.leave(self._transport)


def live_followers(
    raw: Mapping[Any, Any], now_s: float, stale_s: float
) -> tuple[dict[str, int], dict[str, str]]:
    """The follower counts of the processes that wrote theirs within `stale_s`, summed by
    transport, and the others' fields and values (to drop)."""
    totals = dict.fromkeys(TRANSPORTS, 0)
    stale: dict[str, str] = {}
    for field, value in raw.items():
        parts = str(value).split()
        try:
            counts, written_ms = [int(n) for n in parts[:-1]], int(parts[-1])
        except (ValueError, IndexError):
            counts, written_ms = [], 0
        if len(counts) != len(TRANSPORTS) or now_s - written_ms / 1000 > stale_s:
            stale[str(field)] = str(value)
            continue
        for transport, n in zip(TRANSPORTS, counts, strict=True):
            totals[transport] += n
    return totals, stale


class RedisCollector(Collector):
    """Every metric, read from Redis at each scrape."""

    def __init__(self, r: redis.Redis, flush_s: float) -> None:
        self.r = r
        self.stale_s = 3 * flush_s + STALE_MARGIN_S

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families from the Redis Hashes and the active index."""
        up = GaugeMetricFamily(
            "rstreams_redis_up", "Whether this scrape could read the metrics in Redis."
        )
        try:
            # Three keys, three slots on a cluster: the cluster client's pipeline sends
            # each command to its node.
            pipe = self.r.pipeline(transaction=False)
            pipe.hgetall(keys.metrics())
            pipe.hgetall(keys.metrics_followers())
            pipe.zcard(keys.active())
            raw_values, raw_followers, active = pipe.execute()
        except redis.RedisError as e:
            log.warning("metrics: Redis unreachable (%s); its metrics left out", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        values = metrics.parse(raw_values)
        followers, stale = live_followers(raw_followers, time.time(), self.stale_s)
        if stale:
            self._drop(stale)
        yield from self._api(values, followers)
        yield from self._workers(values, int(active))

    def _drop(self, stale: dict[str, str]) -> None:
        args = [x for pair in stale.items() for x in pair]
        try:
            run_script(self.r, _DROP_STALE, [keys.metrics_followers()], args)
        except redis.RedisError as e:
            log.debug("stale follower counts not dropped (%s); the next scrape will", e)

    def _api(self, values: dict[str, float], followers: dict[str, int]) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "rstreams_followers",
            "Followers connected to the web processes now.",
            labels=["transport"],
        )
        delivered = CounterMetricFamily(
            "rstreams_chunks_delivered",
            "Chunk events written to followers (a chunk followed by 3 clients counts 3).",
            labels=["transport"],
        )
        for transport in TRANSPORTS:
            gauge.add_metric([transport], followers[transport])
            delivered.add_metric([transport], values.get(metrics.DELIVERED + transport, 0))
        yield gauge
        yield delivered
        yield HistogramMetricFamily(
            "rstreams_delivery_latency_seconds",
            "From an entry's append in Redis (its id's milliseconds) to its batch's write to "
            "a live follower; one observation per batch per follower, for the batch's "
            "oldest entry.",
            buckets=_cumulative(
                values, metrics.DELIVERY_LATENCY_BUCKETS_S, metrics.DELIVERY_LATENCY
            ),
            sum_value=values.get(_LATENCY_SUM, 0),
        )

    def _workers(self, values: dict[str, float], active: int) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "rstreams_active_sessions",
            "Sessions queued or running (the reaper's index; ended ones leave it within "
            "a reaper pass).",
            value=active,
        )
        yield CounterMetricFamily(
            "rstreams_chunks_appended",
            "Chunks the workers wrote to Redis.",
            value=values.get(metrics.CHUNKS_APPENDED, 0),
        )
        yield CounterMetricFamily(
            "rstreams_reaper_takeovers",
            "Running sessions whose worker died, handed to another worker by the reaper.",
            value=values.get(metrics.REAPER_TAKEOVERS, 0),
        )
        errors = CounterMetricFamily(
            "rstreams_provider_errors",
            "Generations ended by a provider error, by error code.",
            labels=["code"],
        )
        for field, value in sorted(values.items()):
            if field.startswith(metrics.PROVIDER_ERRORS):
                errors.add_metric([field.removeprefix(metrics.PROVIDER_ERRORS)], value)
        yield errors
        yield HistogramMetricFamily(
            "rstreams_generation_seconds",
            "Time of a generation attempt that ended (completed or failed), lease to "
            "terminal event.",
            buckets=_cumulative(values, metrics.GENERATION_BUCKETS_S, metrics.GENERATION),
            sum_value=values.get(metrics.GENERATION + "sum", 0),
        )


def _cumulative(
    values: dict[str, float], bounds: tuple[float, ...], histogram: str
) -> list[tuple[str, float]]:
    """A histogram's cumulative buckets from its per-bucket fields."""
    buckets, total = [], 0.0
    for upper in bounds:
        total += values.get(metrics.bucket_field(upper, histogram), 0)
        buckets.append(("+Inf" if upper == float("inf") else str(float(upper)), total))
    return buckets


@bp.get("/metrics")
def scrape() -> Response:
    """Every metric, in Prometheus text format (needs an API key when keys are configured)."""
    b = backend()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(b.redis, b.settings.api.metrics_flush_s))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
