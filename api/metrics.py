"""`GET /metrics` in Prometheus text format: this API's followers and deliveries, and the
workers' counts from Redis (`shared.metrics`).

gunicorn runs several web processes (WEB_CONCURRENCY) and a scrape reaches one of them.
`api/gunicorn_conf.py` gives them a shared PROMETHEUS_MULTIPROC_DIR, where
prometheus_client's multiprocess mode keeps each process's values in a file, and a
scrape sums them: whichever process answers, it shows every live web process's
followers and every delivery since the web process started. Without that directory
(the app run outside gunicorn) a scrape shows the process that answered it.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections.abc import Iterator

import redis
from flask import Blueprint, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.backend import backend
from shared import metrics, streams

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The API's own metrics, apart from prometheus_client's default registry (in multiprocess
# mode they are read back from the directory instead).
LOCAL = CollectorRegistry(auto_describe=True)

_FOLLOWERS = Gauge(
    "rstreams_followers",
    "Followers connected to the web processes now.",
    ["transport"],
    registry=LOCAL,
    multiprocess_mode="livesum",
)
_DELIVERED = Counter(
    "rstreams_chunks_delivered",
    "Chunk events written to followers (a chunk followed by 3 clients counts 3).",
    ["transport"],
    registry=LOCAL,
)
_LATENCY = Histogram(
    "rstreams_delivery_latency_seconds",
    "From an entry's append in Redis (its id's milliseconds) to its batch's write to a "
    "live follower; one observation per batch per follower, for the batch's oldest entry.",
    registry=LOCAL,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_LATENCY_BOUNDS: list[float] = list(_LATENCY._upper_bounds)  # ends with +Inf


# A follower adds up its counts and hands them to the metrics at most this often (and
# when it leaves): in multiprocess mode every update of a metric is a locked write to
# a memory-mapped file, which per batch would cost several times what counting does.
FLUSH_S = 1.0


class Follower:
    """One follower's metrics: counted in `rstreams_followers` until `leave`."""

    def __init__(self, transport: str) -> None:
        self._gauge = _FOLLOWERS.labels(transport)
        self._delivered = _DELIVERED.labels(transport)
        now = time.time()
        # Entries appended before the follower came are a replay, not a delivery delay.
        self._since_ms = int(now * 1000)
        self._flush_at = now + FLUSH_S
        self._chunks = 0
        self._latency_counts = [0] * len(_LATENCY_BOUNDS)  # per bucket, not cumulative
        self._latency_sum = 0.0
        self._gauge.inc()
        self._is_in = True

    def sent(self, batch: streams.Batch) -> None:
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
        """Add what was counted since the last flush to the metrics."""
        self._flush_at = time.time() + FLUSH_S
        if self._chunks:
            self._delivered.inc(self._chunks)
            self._chunks = 0
        if self._latency_sum or any(self._latency_counts):
            # Histogram.observe adds 1 to a bucket and the value to the sum; this adds
            # many observations' worth at once.
            for bucket, n in zip(_LATENCY._buckets, self._latency_counts, strict=True):
                if n:
                    bucket.inc(n)
            _LATENCY._sum.inc(self._latency_sum)
            self._latency_counts = [0] * len(_LATENCY_BOUNDS)
            self._latency_sum = 0.0

    def leave(self) -> None:
        """The follower is gone: flush its counts, leave the gauge (idempotent)."""
        if self._is_in:
            self._is_in = False
            self.flush()
            self._gauge.dec()


class WorkerCollector(Collector):
    """The workers' metrics, read from Redis at each scrape."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families from the Redis Hash and the active index."""
        up = GaugeMetricFamily(
            "rstreams_redis_up", "Whether this scrape could read the workers' metrics."
        )
        try:
            values = metrics.read(self.r)
            active = metrics.active_sessions(self.r)
        except redis.RedisError as e:
            log.warning("metrics: Redis unreachable (%s); workers' metrics left out", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
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
        buckets, total = [], 0.0
        for upper in metrics.GENERATION_BUCKETS_S:
            total += values.get(metrics.bucket_field(upper), 0)
            buckets.append(("+Inf" if upper == float("inf") else str(float(upper)), total))
        yield HistogramMetricFamily(
            "rstreams_generation_seconds",
            "Time of a generation attempt that ended (completed or failed), lease to "
            "terminal event.",
            buckets=buckets,
            sum_value=values.get(metrics.GENERATION + "sum", 0),
        )


def _api_registry() -> CollectorRegistry:
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return LOCAL


@bp.get("/metrics")
def scrape() -> Response:
    """Every metric, in Prometheus text format (needs an API key when keys are configured)."""
    workers = CollectorRegistry(auto_describe=False)
    workers.register(WorkerCollector(backend().redis))
    body = generate_latest(_api_registry()) + generate_latest(workers)
    return Response(body, content_type=CONTENT_TYPE_LATEST)
