"""A chaos run: many sessions and followers while API, worker and Redis are knocked over.

Used by the suite (small) and by `bench/soak.py` (large).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis
import requests
import websocket

from rstreams.localredis import LocalRedis
from shared import fields, keys
from tests import client
from tests.procs import Api, Worker

TERMINAL = {"done", "error", "cancelled"}
# Set on each event a follower saw: which of its connections brought it (`check` names it).
CONNECTION = "_connection"


@dataclass
class Report:
    """What a chaos run saw."""

    sessions: int = 0
    followers: int = 0
    reconnects: int = 0
    faults: list[str] = field(default_factory=list)
    recovery_s: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    # Per session resumed by another worker: the pause its readers saw, in seconds.
    takeover_pauses_s: list[float] = field(default_factory=list)
    # The longest pause between two chunks of a session no other worker took over.
    longest_pause_s: float = 0.0


class Cluster:
    """The processes of a chaos run, replaced as they are killed."""

    def __init__(self, env: dict[str, str], logs_dir: Any, redis_server: LocalRedis) -> None:
        self.env = env
        self.logs_dir = logs_dir
        self.redis = redis_server
        self.apis: list[Api] = []
        self.workers: list[Worker] = []
        self.lock = threading.Lock()
        self.n = 0

    def add_api(self) -> Api:
        self.n += 1
        api = Api(self.env, self.logs_dir, name=f"chaos-api{self.n}").start()
        with self.lock:
            self.apis.append(api)
        return api

    def add_worker(self) -> Worker:
        self.n += 1
        worker = Worker(self.env, self.logs_dir, name=f"chaos-w{self.n}").start()
        self.workers.append(worker)
        return worker

    def live_apis(self) -> list[Api]:
        with self.lock:
            return [a for a in self.apis if a.proc and a.proc.poll() is None]

    def stop(self) -> None:
        for proc in [*self.apis, *self.workers]:
            proc.stop(timeout_s=10)


def busiest_worker(cluster: Cluster, session_ids: list[str]) -> Worker:
    """The live worker holding the most of these sessions' leases: killing it makes
    sure the kill hits running sessions, whatever the machine's speed."""
    r = redis.Redis.from_url(cluster.redis.url, decode_responses=True)
    held = Counter(
        int(str(holder).rsplit(":", 1)[1])
        for sid in session_ids
        if r.exists(keys.lease(sid)) and (holder := r.hget(keys.meta(sid), fields.WORKER))
    )
    assert held, "no session is running: the worker kill would hit nothing"
    live = [w for w in cluster.workers if w.proc and w.proc.poll() is None]
    return max(live, key=lambda w: held[w.proc.pid] if w.proc else 0)


def follow_with_drops(
    cluster: Cluster,
    session_id: str,
    kind: str,
    rng: random.Random,
    deadline: float,
    report: Report,
) -> list[dict[str, Any]]:
    """Follow to the end, dropping the connection at random and resuming from the cursor."""
    events: list[dict[str, Any]] = []
    failures = 0
    while not events or events[-1]["type"] not in TERMINAL:
        if time.monotonic() > deadline:
            report.problems.append(f"{session_id} {kind}: no end before the deadline")
            return events
        apis = cluster.live_apis()
        if not apis:
            time.sleep(0.1)
            continue
        api = rng.choice(apis)
        after = events[-1]["id"] if events else None
        budget = rng.randint(3, 60)
        try:
            if kind == "ws":
                got = client.ws_follow(
                    api.ws_url, session_id, after=after, max_events=budget, timeout_s=15
                ).events
            else:
                got = client.sse_follow(
                    api.url, session_id, after=after, max_events=budget, timeout_s=15
                ).events
        except (OSError, websocket.WebSocketException, requests.RequestException, AssertionError):
            # As a real client does: exponential backoff with jitter, so that a struggling
            # server is not met by every follower retrying at once.
            got = []
            failures += 1
            time.sleep(rng.uniform(0.5, 1.0) * min(5.0, 0.2 * 2**failures))
        else:
            failures = 0
        for event in got:
            event[CONNECTION] = report.reconnects
        events += got
        report.reconnects += 1
        if rng.random() < 0.3:
            time.sleep(rng.uniform(0, 0.3))
    return events


def check(events: list[dict[str, Any]], text: dict[str, Any], label: str) -> list[str]:
    """Everything a follower saw must be whole, in order, once, and equal `/text`."""
    problems = []
    with_ids = [e for e in events if "id" in e]
    ids = [tuple(map(int, e["id"].split("-"))) for e in with_ids]
    if ids != sorted(set(ids)):
        at = next(i for i in range(1, len(ids)) if ids[i] <= ids[i - 1])
        seen = [
            f"{e['id']} {e['type']} {e.get('index', '')} (connection {e.get(CONNECTION)})"
            for e in with_ids[max(0, at - 3) : at + 3]
        ]
        problems.append(f"{label}: ids repeated or out of order at {at} of {len(ids)}: {seen}")
    indices = [e["index"] for e in events if e["type"] == "chunk"]
    if indices != list(range(len(indices))):
        problems.append(f"{label}: chunk indices not 0..n-1 exactly once")
    if client.chunks_text(events) != text["text"]:
        problems.append(f"{label}: text differs from /text")
    if text["status"] != "completed" or not events or events[-1]["type"] != "done":
        problems.append(
            f"{label}: ended {text['status']} / {events[-1]['type'] if events else None}"
        )
    return problems


def _ms(event: dict[str, Any]) -> int:
    return int(event["id"].split("-")[0])


def measure_pauses(events: list[dict[str, Any]], report: Report) -> None:
    """Pauses between chunks, read off the entry ids (Redis millisecond timestamps)."""
    chunks = [e for e in events if e["type"] == "chunk"]
    resumes = [e for e in events if e["type"] == "status" and e["status"] == "resumed"]
    if not resumes:
        gaps = [(_ms(b) - _ms(a)) / 1000 for a, b in itertools.pairwise(chunks)]
        report.longest_pause_s = max([report.longest_pause_s, *gaps])
    for resumed in resumes:
        before = [c for c in chunks if _ms(c) <= _ms(resumed)]
        after = [c for c in chunks if _ms(c) >= _ms(resumed)]
        if before and after:
            report.takeover_pauses_s.append((_ms(after[0]) - _ms(before[-1])) / 1000)


def run_chaos(
    cluster: Cluster,
    *,
    sessions: int,
    followers_per_session: int,
    chunks: int,
    seed: int,
    redis_down_s: float,
    deadline_s: float,
    fault_gap_s: float = 1.0,
) -> Report:
    """Start sessions and followers, inject one API kill, one worker kill, one Redis restart."""
    report = Report(sessions=sessions, followers=sessions * followers_per_session)
    started = time.monotonic()
    deadline = started + deadline_s
    api0 = cluster.live_apis()[0]
    ids = [
        client.create(api0.url, prompt=f"chaos {seed} {n}", max_tokens=chunks)["sessionId"]
        for n in range(sessions)
    ]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}

    def follower(session_id: str, k: int) -> None:
        kind = "sse" if k % 3 == 2 else "ws"
        results[(session_id, k)] = follow_with_drops(
            cluster, session_id, kind, random.Random(f"{seed}-{session_id}-{k}"), deadline, report
        )

    threads = [
        threading.Thread(target=follower, args=(sid, k), daemon=True)
        for sid in ids
        for k in range(followers_per_session)
    ]
    for t in threads:
        t.start()

    def probe_ready(url_of: Any) -> float:
        t0 = time.monotonic()
        while time.monotonic() < deadline:
            try:
                if requests.get(url_of() + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except requests.RequestException:
                pass
            time.sleep(0.05)
        return float("nan")

    # Every session is generating before the first fault, however slow the machine.
    r = redis.Redis.from_url(cluster.redis.url, decode_responses=True)
    while not all(int(r.hget(keys.meta(sid), fields.CHUNKS) or 0) > 0 for sid in ids):
        assert time.monotonic() < deadline, "the sessions never started"
        time.sleep(0.05)

    # The worker first, while its sessions are surely running: each is taken over.
    worker = busiest_worker(cluster, ids)
    worker.kill()
    report.faults.append(f"kill -9 worker {worker.name}")
    cluster.add_worker()

    victim = cluster.live_apis()[0]
    victim.kill()
    report.faults.append(f"kill -9 API {victim.name}")
    t0 = time.monotonic()
    cluster.add_api()
    report.recovery_s["api_replaced"] = time.monotonic() - t0

    # Far enough after the worker kill that the takeover and the outage are measured apart.
    time.sleep(fault_gap_s)
    cluster.redis.stop()
    report.faults.append(f"Redis stopped for {redis_down_s} s")
    time.sleep(redis_down_s)
    cluster.redis.start()
    report.recovery_s["redis_ready_after_start"] = probe_ready(lambda: cluster.live_apis()[0].url)

    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 5)
    api = cluster.live_apis()[0]
    for sid in ids:
        text = client.text(api.url, sid)
        for k in range(followers_per_session):
            report.problems += check(results.get((sid, k), []), text, f"{sid}/{k}")
        measure_pauses(results.get((sid, 0), []), report)
    report.duration_s = time.monotonic() - started
    return report
