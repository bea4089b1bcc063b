"""Every benchmark in one run, written to docs/BENCHMARKS.md.

    .venv/bin/python -m bench [--quick] [--out docs/BENCHMARKS.md]

Side by side at the same loads (sessions x followers at 50 chunks/s): (a) the floor,
redis-py XADD -> one multiplexed XREAD -> in-process hand-off; (b) the product end to
end, worker -> Redis -> API -> WebSocket client, with each process's CPU, and the
delivery ceiling of one API process; (c) replay of a 10,000-chunk session to a new
WebSocket client; (d) one API process's memory and Redis connections with 1,000 idle
followers; gunicorn worker classes compared under (b) and (d); and how many concurrent
demo generations one worker process keeps on time. Each part starts its own
redis-server and processes. The figures replace the part of the output file between
its `bench:begin` and `bench:end` markers; the rest of the file is kept.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import floor, followers, throughput
from rstreams.localredis import LocalRedis, find_redis_server

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
RATE = 50
LOADS = [(1, 1), (100, 1), (100, 10)]


def machine() -> str:
    """One line on what the figures ran on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    binary = find_redis_server() or "redis-server"
    redis_version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2]
    return (
        f"{platform.system()} {platform.release()} {platform.machine()}, {cpu}, "
        f"{os.cpu_count()} cores, {mem_kb / 1024 / 1024:.0f} GiB; Python "
        f"{platform.python_version()}; redis-server {redis_version.removeprefix('v=')}; "
        "everything on loopback, the clients on the same machine"
    )


def floor_table(chunks: int) -> str:
    """(a) at every load."""
    server = LocalRedis().start()
    try:
        rows = [floor.measure(server.url, s, f, RATE, chunks) for s, f in LOADS]
    finally:
        server.close()
    lines = [
        "| sessions x followers | deliveries | lost | p50 ms | p99 ms | max ms | deliveries/s "
        "| CPU: reader | writer | Redis |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['load']} | {r['deliveries']:,} | {r['lost']} | {r['p50']:.2f} | {r['p99']:.2f} "
        f"| {r['max']:.2f} | {r['per_s']:,.0f} | {r['reader_cpu']:.2f} | {r['writer_cpu']:.2f} "
        f"| {r['redis_cpu']:.2f} |"
        for r in rows
    ]
    return "\n".join(lines)


def product_table(rows: list[dict[str, Any]]) -> str:
    """(b) rows as Markdown."""
    return "\n".join([followers.LOAD_HEADER] + [followers.load_row(r) for r in rows])


def worker_load(sessions: int) -> list[str]:
    """The Markdown table (header, rule, row) `bench.worker_load` prints for `sessions`."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.worker_load", "--sessions", str(sessions)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line.startswith("|")]


def main() -> None:
    """Run everything and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    args = parser.parse_args()
    chunks = 100 if args.quick else 250
    logs = Path(tempfile.mkdtemp(prefix="rstreams-bench-"))
    started = time.monotonic()

    def say(what: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {what}", flush=True)

    say("(a) the floor")
    floor_md = floor_table(chunks)
    product: dict[str, list[dict[str, Any]]] = {}
    for worker_class in ("gevent", "gthread"):
        say(f"(b) the product, gunicorn {worker_class}")
        product[worker_class] = [
            followers.run_load(s, f, rate=RATE, chunks=chunks, worker_class=worker_class, logs=logs)
            for s, f in LOADS
        ]
    say("(b) ceiling: more followers per session until p99 passes 10 ms or anything is lost")
    ceiling = []
    for per_session in (2, 3, 4, 6, 8):
        row = followers.run_load(100, per_session, rate=RATE, chunks=chunks, logs=logs)
        ceiling.append(row)
        if row["p99"] > 10 or row["lost"] or row["repeated"]:
            break
    say("(c) replay of 10,000 chunks")
    replay = throughput.measure(3 if args.quick else 5, 10_000, logs)
    say("(d) 1,000 idle followers")
    idle = {
        wc: followers.idle_load(1000, worker_class=wc, logs=logs) for wc in ("gevent", "gthread")
    }
    say("worker: concurrent demo generations")
    tables = [worker_load(n) for n in ((200,) if args.quick else (200, 500))]
    workers = tables[0][:2] + [table[-1] for table in tables]
    say("done")

    command = "python -m bench" + (" --quick" if args.quick else "")
    gevent = product["gevent"]
    best = max(
        (r for r in gevent + ceiling if r["p99"] <= 10 and not r["lost"]),
        key=lambda r: r["per_api_core"],
        default=None,
    )
    replays = replay["replays_ms"]
    idle_gevent = idle["gevent"]
    big = gevent[-1]
    targets = [
        (
            "100 x 10 x 50/s: zero loss, p50 <= 2 ms, p99 <= 10 ms",
            f"lost {big['lost']}, p50 {big['p50']:.0f} ms, p99 {big['p99']:.0f} ms",
            big["lost"] == 0 and big["p50"] <= 2 and big["p99"] <= 10,
        ),
        (
            "replay of 10,000 chunks to a new WebSocket client <= 50 ms",
            f"median {statistics.median(replays):.0f} ms (min {min(replays):.0f})",
            statistics.median(replays) <= 50,
        ),
        (
            "1,000 followers on one API process: <= 5 Redis connections, <= 200 MB RSS",
            f"{idle_gevent['redis_connections']} connections, {idle_gevent['rss']:.0f} MB",
            idle_gevent["redis_connections"] <= 5 and idle_gevent["rss"] <= 200,
        ),
        (
            ">= 25k deliveries/s per API core-second with p99 <= 10 ms",
            (
                f"{best['per_api_core']:,.0f} at {best['load']} (p99 {best['p99']:.0f} ms)"
                if best
                else "no load had p99 <= 10 ms"
            ),
            bool(best and best["per_api_core"] >= 25_000),
        ),
    ]
    today = datetime.date.today().isoformat()
    body = (
        f"""{BEGIN}
Written by `{command}` on {today} ({(time.monotonic() - started) / 60:.0f} min).
Machine: {machine()}.

### Targets

| target | measured | met |
|---|---|---|
"""
        + "\n".join(f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in targets)
        + f"""

### (a) The floor: redis-py XADD -> one multiplexed XREAD -> in-process hand-off

{RATE} entries/s per stream, {chunks} each; latency from before the XADD to the hand-off
(`time.time()`, sub-millisecond).

{floor_md}

### (b) The product: worker -> Redis -> API -> WebSocket client

{RATE} chunks/s per session, {chunks} each; one API process (gunicorn, one worker
process), one Celery worker process, two client processes. Latency from the chunk's
cursor (Redis' millisecond clock at the append) to receipt, so whole milliseconds.
CPU is in cores over the run; "per API core-second" is deliveries per second of the
API's CPU time.

gunicorn `gevent` (the Procfile's):

{product_table(gevent)}

gunicorn `gthread` (one thread per connection, `--threads 1200`):

{product_table(product["gthread"])}

Ceiling of one API process (gevent): 100 sessions at {RATE} chunks/s, more followers each,
until p99 passes 10 ms.

{product_table(ceiling)}

### (c) Replay of a 10,000-chunk session to a new WebSocket client

From the connect call to the `done` frame, raw reader; {len(replays)} sessions written
by an unthrottled demo worker.

| measure | median | min | max |
|---|---|---|---|
| replay (ms) | {statistics.median(replays):.0f} | {min(replays):.0f} | {max(replays):.0f} |
| append rate of one session (chunks/s) | {statistics.median(replay["rates"]):,.0f} \
| {min(replay["rates"]):,.0f} | {max(replay["rates"]):,.0f} |

### (d) 1,000 idle WebSocket followers on one API process

100 sessions that no worker generates, 10 followers each, each with its first event,
then 3 s of waiting. RSS of gunicorn's master and worker together; Redis connections
are all the server's clients but the one asking.

| API | RSS before | RSS with 1,000 | Redis connections |
|---|---|---|---|
"""
        + "\n".join(
            f"| {name} | {f['rss_before']:.0f} MB | {f['rss']:.0f} MB | {f['redis_connections']} |"
            for name, f in idle.items()
        )
        + """

### Concurrent demo generations in one worker process

`python -m bench.worker_load --sessions N`: N sessions of 200 chunks at 20 chunks/s
enqueued at once; lateness is each chunk's append time minus its schedule.

"""
        + "\n".join(workers)
        + f"\n{END}"
    )
    out = Path(args.out)
    text = out.read_text() if out.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + body + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    out.write_text(text)
    say(f"wrote {out}")


if __name__ == "__main__":
    main()
