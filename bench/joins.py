"""What a follower's join costs: Redis commands and round trips, and API CPU, per join.

    .venv/bin/python -m bench.joins [--followers 50]

One redis-server and one API process of its own (gunicorn gevent, the default follower
limits on, so each join takes its places), sessions created through the API and left
queued (no worker). For each way of joining it resets Redis' statistics, connects the
followers, waits until each has its first frame (or, for a reconnect at the head, until
Redis has been quiet for a while), and divides what Redis counted by the followers:
`INFO commandstats` (commands, the statistics calls of the bench taken out) and `INFO
stats` `total_reads_processed` (the reads of client input Redis made: a pipeline that
arrives in one read is one, so about one per round trip); and the CPU time the API
process (gunicorn's master and worker) used meanwhile, from /proc (10 ms ticks: with 50
joins, about 0.2 ms per join).

- `new sessions`: each follower the first of its session in the process, one at a time.
- `one session, one by one`: a crowd joining a session already followed, one at a time.
- `one session, together`: the same crowd connecting at once (a reconnect storm).
- `reconnect at the head`: one at a time, with `?after=` the session's last cursor.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from bench.procstat import cpu_s
from bench.wsclient import handshake
from rstreams.localredis import LocalRedis
from shared import keys
from tests import client
from tests.procs import Api, child_env

_OURS = ("cmdstat_info", "cmdstat_config")  # the bench's own commands


def counts(watcher: redis.Redis) -> tuple[int, int]:
    """(commands, reads processed) since the statistics were reset, the bench's own
    (CONFIG RESETSTAT and every INFO, each one read) taken out."""
    stats: dict[str, Any] = watcher.info("commandstats")
    commands = sum(int(v["calls"]) for k, v in stats.items() if k not in _OURS)
    own = sum(int(v["calls"]) for k, v in stats.items() if k in _OURS)
    reads = int(watcher.info("stats")["total_reads_processed"])
    return commands, reads - own - 1  # and the INFO that asked


def connect(api: Api, path: str, *, wait: bool = True) -> Any:
    """A follower on `path`; with `wait`, once the server's first frame has arrived."""
    sock, data = handshake("127.0.0.1", api.port, path)
    sock.settimeout(10)
    while wait and len(data) < 2:
        data += sock.recv(4096)
    return sock


def quiet(watcher: redis.Redis, idle_s: float = 0.5) -> None:
    """Wait until Redis has processed no client reads for `idle_s` (besides ours)."""
    last = -1
    while True:
        now = int(watcher.info("stats")["total_reads_processed"])
        if now - last <= 1:
            return
        last = now
        time.sleep(idle_s)


def measure(api: Api, watcher: redis.Redis, paths: list[str], *, together: bool, head: bool):
    """Connect a follower to each path; (commands, round trips, API CPU ms) per join."""
    places = keys.caller_followers("addr:127.0.0.1")
    before = watcher.zcard(places)
    watcher.config_resetstat()
    assert api.proc is not None
    cpu_before = cpu_s(api.proc.pid)
    socks: list[Any] = []
    if together:
        barrier = threading.Barrier(len(paths))

        def join(path: str) -> None:
            barrier.wait()
            socks.append(connect(api, path))

        threads = [threading.Thread(target=join, args=(p,)) for p in paths]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    else:
        for path in paths:
            socks.append(connect(api, path, wait=not head))
    quiet(watcher)
    cpu = cpu_s(api.proc.pid) - cpu_before
    commands, reads = counts(watcher)
    for sock in socks:
        sock.close()
    # A follower finds its client gone at its next keep-alive tick (XREAD_BLOCK_MS): wait
    # until all have left, so their leaving is not counted as the next joins' cost.
    deadline = time.monotonic() + 30
    while watcher.zcard(places) > before and time.monotonic() < deadline:
        time.sleep(0.1)
    n = len(paths)
    return commands / n, reads / n, cpu * 1000 / n


def start_api(logs: Path, name: str) -> tuple[LocalRedis, Api]:
    """A redis-server and one API process (gunicorn gevent) of their own, the follower
    limits on and the others off, for followers to join."""
    server = LocalRedis().start()
    env = child_env(
        REDIS_URL=server.url,
        RATE_CREATES_PER_MIN="0",
        MAX_RUNNING_PER_CALLER="0",
        METRICS_FLUSH_S="3600",  # no flushes in the counts
        GUNICORN_CMD_ARGS="--workers 1 --worker-class gevent",
    )
    return server, Api(env, logs, name=name).start()


def run(followers: int, logs: Path) -> dict[str, tuple[float, float, float]]:
    """Every way of joining: (commands, round trips, API CPU ms) per join."""
    server, api = start_api(logs, "api-joins")
    watcher = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        ids = [client.create(api.url, prompt=f"join {n}")["sessionId"] for n in range(followers)]
        crowd = client.create(api.url, prompt="crowd")["sessionId"]
        held = connect(api, f"/api/streams/{crowd}/ws")  # keeps it followed
        head = client.ws_follow(api.ws_url, crowd, max_events=1).events[0]["id"]
        result = {
            "new sessions": measure(
                api, watcher, [f"/api/streams/{i}/ws" for i in ids], together=False, head=False
            ),
            "one session, one by one": measure(
                api, watcher, [f"/api/streams/{crowd}/ws"] * followers, together=False, head=False
            ),
            "one session, together": measure(
                api, watcher, [f"/api/streams/{crowd}/ws"] * followers, together=True, head=False
            ),
            "reconnect at the head": measure(
                api,
                watcher,
                [f"/api/streams/{crowd}/ws?after={head}"] * followers,
                together=False,
                head=True,
            ),
        }
        held.close()
        return result
    finally:
        api.stop()
        watcher.close()
        server.close()


TABLE_HEADER = (
    "| join | Redis commands per join | round trips per join | API CPU ms per join |\n"
    "|---|---|---|---|"
)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=50)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="rstreams-joins-"))
    print(TABLE_HEADER)
    for name, (commands, trips, cpu_ms) in run(args.followers, logs).items():
        print(f"| {name} | {commands:.1f} | {trips:.1f} | {cpu_ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
