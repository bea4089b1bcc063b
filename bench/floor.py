"""The floor: what Redis and redis-py alone cost at a load, with nothing of the product.

A writer process `XADD`s to S streams at R entries/s each (entries carry their send time);
one reader thread in this process runs one `XREAD BLOCK` over all S streams and hands
each entry to F in-process queues (followers). Latency is hand-off time minus send time,
both `time.time()` on one machine, so it has sub-millisecond resolution. This is the
shape of the product's fan-out without the worker's script, the API and the WebSocket.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import deque
from typing import Any

import redis

from api.readers import by_key
from bench.procstat import cpu_s
from bench.stats import percentiles


def _write(url: str, sessions: int, rate: float, entries: int, start_at: float) -> None:
    r = redis.Redis.from_url(url)
    keys = [f"floor:{{{s}}}" for s in range(sessions)]
    step = 1.0 / (rate * sessions)  # spread the sessions' entries evenly over time
    for k in range(entries * sessions):
        due = start_at + k * step
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        r.xadd(keys[k % sessions], {"t": repr(time.time()), "i": k // sessions})
    for key in keys:
        r.xadd(key, {"end": "1"})


def measure(url: str, sessions: int, followers: int, rate: float, entries: int) -> dict[str, Any]:
    """One load: (S streams x F followers at R/s, `entries` each) through the floor."""
    r = redis.Redis.from_url(url, socket_timeout=10)
    r.flushdb()
    keys = [f"floor:{{{s}}}" for s in range(sessions)]
    queues = [[deque() for _ in range(followers)] for _ in range(sessions)]
    latencies: list[float] = []
    ended = threading.Event()

    def read() -> None:
        cursors = dict.fromkeys(keys, "0-0")
        done = 0
        while done < sessions:
            response = r.xread(cursors, count=500, block=1000)
            now = time.time()
            for key, entries_ in by_key(response):
                k = key.decode()
                s = int(k[k.index("{") + 1 : k.index("}")])
                for entry_id, fields in entries_:
                    cursors[k] = entry_id
                    if b"end" in fields:
                        done += 1
                        continue
                    lat_ms = (now - float(fields[b"t"])) * 1000
                    for q in queues[s]:
                        q.append(entry_id)
                        latencies.append(lat_ms)
        ended.set()

    reader = threading.Thread(target=read, daemon=True)
    start_at = time.time() + 0.5
    writer = multiprocessing.get_context("fork").Process(
        target=_write, args=(url, sessions, rate, entries, start_at), daemon=True
    )
    own_before = time.process_time()
    redis_pid = int(r.info("server")["process_id"])
    redis_before = cpu_s(redis_pid)
    reader.start()
    writer.start()
    writer_cpu = 0.0
    while writer.is_alive():
        writer_cpu = cpu_s(writer.pid or 0) or writer_cpu
        time.sleep(0.2)
    ended.wait(30)
    wall = time.time() - start_at
    delivered = sum(len(q) for qs in queues for q in qs)
    q = percentiles(latencies)
    return {
        "load": f"{sessions} x {followers}",
        "deliveries": delivered,
        "lost": sessions * followers * entries - delivered,
        "p50": q[49],
        "p99": q[98],
        "max": max(latencies),
        "per_s": delivered / wall,
        "reader_cpu": (time.process_time() - own_before) / wall,
        "writer_cpu": writer_cpu / wall,
        "redis_cpu": (cpu_s(redis_pid) - redis_before) / wall,
    }
