"""Every benchmark in one run, written to docs/BENCHMARKS.md.

    .venv/bin/python -m bench [--quick] [--runs 3] [--out docs/BENCHMARKS.md]

Side by side at the same loads (sessions x followers at 50 chunks/s): (a) the floor,
redis-py XADD -> one multiplexed XREAD -> in-process hand-off; (b) the product end to
end, worker -> Redis -> API -> WebSocket client, with each process's CPU, and the
delivery ceiling of one API process; (c) replay of a 10,000-chunk session to a new
WebSocket client; (d) one API process's memory and Redis connections with 1,000 idle
followers; (e) join storms, followers connecting within a second while their sessions
generate; (f) a reconnect storm, 1,000 followers after the API is killed and started
again; what a join costs Redis; gunicorn worker classes compared under (b) and (d); and
how many concurrent demo generations one worker process keeps on time. Each load of
(a), (b), (e), (f) and the joins runs `--runs` times (3; 1 with `--quick`), and the
tables give the median with the lowest and highest in brackets: on a shared machine a
single run is not a figure. Each part starts its own redis-server and processes. The
figures replace the part of the output file between its `bench:begin` and `bench:end`
markers; the rest of the file is kept.
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

from bench import floor, followers, joins, peer, storms, throughput
from bench.stats import median_spread
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


def spread(rows: list[dict[str, Any]], key: str, spec: str = "{:,.0f}") -> str:
    """The median of `key` over `rows`, with the lowest and highest in brackets."""
    return median_spread([float(r[key]) for r in rows], spec)


def repeat(runs: int, measure: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """`measure(*args, **kwargs)` `runs` times."""
    return [measure(*args, **kwargs) for _ in range(runs)]


def floor_table(chunks: int, runs: int) -> str:
    """(a) at every load."""
    server = LocalRedis().start()
    try:
        loads = [repeat(runs, floor.measure, server.url, s, f, RATE, chunks) for s, f in LOADS]
    finally:
        server.close()
    lines = [
        "| sessions x followers | deliveries | lost | p50 ms | p99 ms | max ms | deliveries/s "
        "| CPU: reader | writer | Redis |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {rows[0]['load']} | {rows[0]['deliveries']:,} | {max(r['lost'] for r in rows)} "
        f"| {spread(rows, 'p50', '{:.2f}')} | {spread(rows, 'p99', '{:.2f}')} "
        f"| {spread(rows, 'max', '{:.2f}')} | {spread(rows, 'per_s')} "
        f"| {spread(rows, 'reader_cpu', '{:.2f}')} | {spread(rows, 'writer_cpu', '{:.2f}')} "
        f"| {spread(rows, 'redis_cpu', '{:.2f}')} |"
        for rows in loads
    ]
    return "\n".join(lines)


PRODUCT_HEADER = (
    "| sessions x followers | deliveries | lost | repeated | p50 ms | p99 ms | max ms "
    "| deliveries/s | per API core-second | API CPU us per delivery | CPU: API | worker "
    "| Redis | clients | API waited for a core (s/s) | Redis clients |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def product_row(rows: list[dict[str, Any]]) -> str:
    """(b) runs of one load as a Markdown row."""
    for r in rows:
        r["us_per_delivery"] = 1e6 / max(r["per_api_core"], 1)
    return (
        f"| {rows[0]['load']} | {spread(rows, 'deliveries')} | {max(r['lost'] for r in rows)} "
        f"| {max(r['repeated'] for r in rows)} | {spread(rows, 'p50')} | {spread(rows, 'p99')} "
        f"| {spread(rows, 'max')} | {spread(rows, 'per_s')} | {spread(rows, 'per_api_core')} "
        f"| {spread(rows, 'us_per_delivery', '{:.1f}')} | {spread(rows, 'api_cpu', '{:.2f}')} "
        f"| {spread(rows, 'worker_cpu', '{:.2f}')} | {spread(rows, 'redis_cpu', '{:.2f}')} "
        f"| {spread(rows, 'client_cpu', '{:.2f}')} | {spread(rows, 'api_wait', '{:.2f}')} "
        f"| {spread(rows, 'redis_clients')} |"
    )


def product_table(loads: list[list[dict[str, Any]]]) -> str:
    """(b) loads as Markdown."""
    return "\n".join([PRODUCT_HEADER] + [product_row(rows) for rows in loads])


def join_storm_table(loads: list[list[dict[str, Any]]]) -> str:
    """(e) loads as Markdown."""
    lines = [storms.JOIN_HEADER]
    lines += [
        f"| {rows[0]['load']} | {spread(rows, 'early')} | {spread(rows, 'early_p50')} "
        f"| {spread(rows, 'early_p99')} | {spread(rows, 'join_p50')} "
        f"| {spread(rows, 'join_p99')} | {spread(rows, 'early_cores', '{:.2f}')} "
        f"| {spread(rows, 'early_waited', '{:.2f}')} | {spread(rows, 'early_machine', '{:.2f}')} "
        + "".join(f"| {spread(rows, f'early_{n}_cores', '{:.2f}')} " for n in storms.OTHERS)
        + f"| {spread(rows, 'late_p50')} "
        f"| {spread(rows, 'late_p99')} | {max(r['lost'] for r in rows)} "
        f"| {max(r['repeated'] for r in rows)} | {max(r['unfinished'] for r in rows)} |"
        for rows in loads
    ]
    return "\n".join(lines)


def reconnect_table(rows: list[dict[str, Any]]) -> str:
    """(f) runs as Markdown."""
    return "\n".join(
        [
            storms.RECONNECT_HEADER,
            f"| {rows[0]['followers']:,} | {spread(rows, 'restart_s', '{:.1f}')} "
            f"| {spread(rows, 'reconnected')} | {spread(rows, 'all_live_s', '{:.2f}')} "
            f"| {spread(rows, 'p50')} | {spread(rows, 'p99')} | {max(r['lost'] for r in rows)} "
            f"| {max(r['repeated'] for r in rows)} | {max(r['unfinished'] for r in rows)} |",
        ]
    )


def peer_steady_table(loads: list[list[dict[str, Any]]]) -> str:
    """The peer at the (b) loads, as Markdown."""
    lines = [peer.STEADY_HEADER]
    lines += [
        f"| {rows[0]['load']} | {spread(rows, 'deliveries')} | {max(r['lost'] for r in rows)} "
        f"| {max(r['repeated'] for r in rows)} | {spread(rows, 'p50')} | {spread(rows, 'p99')} "
        f"| {spread(rows, 'max')} | {spread(rows, 'per_core_s')} "
        f"| {spread(rows, 'api_cpu', '{:.2f}')} | {spread(rows, 'producer_cpu', '{:.2f}')} "
        f"| {max(r['unfinished'] for r in rows)} |"
        for rows in loads
    ]
    return "\n".join(lines)


def versus_peer(pairs: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]], str]]) -> str:
    """The product's median p99 beside the peer's, load by load, as Markdown."""
    lines = [
        "| load | p99 ms: product | peer | product / peer |",
        "|---|---|---|---|",
    ]
    for name, ours, theirs, key in pairs:
        a = statistics.median(r[key] for r in ours)
        b = statistics.median(r[key] for r in theirs)
        lines.append(f"| {name} | {a:,.0f} | {b:,.0f} | {a / b if b else float('inf'):.2f} |")
    return "\n".join(lines)


def joins_table(runs: list[dict[str, tuple[float, float, float]]]) -> str:
    """What a join costs Redis and the API, as Markdown."""
    lines = [joins.TABLE_HEADER]
    for name in runs[0]:
        rows = [dict(zip(("commands", "trips", "cpu"), run[name], strict=True)) for run in runs]
        cells = [spread(rows, key, "{:.1f}") for key in ("commands", "trips", "cpu")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def table_of(*module_args: str) -> list[str]:
    """The Markdown table lines a bench module prints, run in a process of its own."""
    out = subprocess.run(
        [sys.executable, "-m", *module_args], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line.startswith("|")]


def worker_load(sessions: int) -> list[str]:
    """The Markdown table (header, rule, row) `bench.worker_load` prints for `sessions`."""
    return table_of("bench.worker_load", "--sessions", str(sessions))


def main() -> None:
    """Run everything and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    parser.add_argument("--runs", type=int, default=0, help="runs of each load (3; 1 if --quick)")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    chunks = 100 if args.quick else 250
    logs = Path(tempfile.mkdtemp(prefix="rstreams-bench-"))
    started = time.monotonic()

    def say(what: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {what}", flush=True)

    say("(a) the floor")
    floor_md = floor_table(chunks, runs)
    product: dict[str, list[list[dict[str, Any]]]] = {}
    for worker_class in ("gevent", "gthread"):
        say(f"(b) the product, gunicorn {worker_class}")
        product[worker_class] = [
            repeat(
                runs,
                followers.run_load,
                s,
                f,
                rate=RATE,
                chunks=chunks,
                worker_class=worker_class,
                logs=logs,
            )
            for s, f in LOADS
        ]
    say("(b) ceiling: more followers per session until p99 passes 10 ms or anything is lost")
    ceiling = []
    for per_session in (2, 3, 4, 6, 8):
        rows = repeat(
            runs, followers.run_load, 100, per_session, rate=RATE, chunks=chunks, logs=logs
        )
        ceiling.append(rows)
        if statistics.median(r["p99"] for r in rows) > 10 or any(
            r["lost"] or r["repeated"] for r in rows
        ):
            break
    say("(c) replay of 10,000 chunks")
    replay = throughput.measure(3 if args.quick else 5, 10_000, logs)
    say("(d) 1,000 idle followers")
    idle = {
        wc: followers.idle_load(1000, worker_class=wc, logs=logs) for wc in ("gevent", "gthread")
    }
    say("(e) join storms")
    join_loads = [(50, 4)] if args.quick else [(50, 4), (100, 10)]
    join_runs = [repeat(runs, storms.join_storm, s, f, rate=RATE, logs=logs) for s, f in join_loads]
    say("(f) reconnect storm")
    reconnect_followers = 200 if args.quick else 1000
    reconnects = repeat(runs, storms.reconnect_storm, reconnect_followers, rate=RATE, logs=logs)
    say("the peer: resumable-stream at (b), (e) and (f)")
    peer_steady = [
        repeat(runs, peer.steady, s, f, rate=RATE, chunks=chunks, logs=logs) for s, f in LOADS
    ]
    peer_joins = [repeat(runs, peer.join_storm, s, f, rate=RATE, logs=logs) for s, f in join_loads]
    peer_reconnects = repeat(runs, peer.reconnect_storm, reconnect_followers, rate=RATE, logs=logs)
    peer_producer_kills = [
        peer.producer_kill(reconnect_followers, rate=RATE, logs=logs) for _ in range(runs)
    ]
    say("what a join costs Redis")
    joins_md = joins_table([joins.run(50, logs) for _ in range(runs)])
    peer_join_cost = repeat(runs, peer.join_cost, 1000, logs=logs)
    peer_follower_ms = spread(peer_join_cost, "follower_ms", "{:.2f}")
    peer_producer_ms = spread(peer_join_cost, "producer_ms", "{:.2f}")
    say("worker: concurrent demo generations")
    tables = [worker_load(n) for n in ((200,) if args.quick else (200, 500))]
    gc_md = "\n".join(table_of("bench.gc_pause"))  # gevent's patches: a process of its own
    workers = tables[0][:2] + [table[-1] for table in tables]
    say("done")

    command = "python -m bench" + (" --quick" if args.quick else "")
    if args.runs:
        command += f" --runs {args.runs}"
    gevent = product["gevent"]
    best = max(
        (rows for rows in gevent + ceiling if statistics.median(r["p99"] for r in rows) <= 10),
        key=lambda rows: statistics.median(r["per_api_core"] for r in rows),
        default=None,
    )
    replays = replay["replays_ms"]
    idle_gevent = idle["gevent"]
    big = gevent[-1]
    big_p99 = statistics.median(r["p99"] for r in big)
    big_per_core = statistics.median(r["per_api_core"] for r in big)
    big_lost = max(r["lost"] + r["repeated"] for r in big)
    targets = [
        (
            "100 x 10 x 50/s: zero loss, p99 <= 10 ms, >= 50,000 deliveries per API core-second",
            f"lost {big_lost}, p99 {spread(big, 'p99')} ms, {spread(big, 'per_api_core')} "
            "per API core-second",
            big_lost == 0 and big_p99 <= 10 and big_per_core >= 50_000,
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
                f"{spread(best, 'per_api_core')} at {best[0]['load']} "
                f"(p99 {spread(best, 'p99')} ms)"
                if best
                else "no load had p99 <= 10 ms"
            ),
            bool(best and statistics.median(r["per_api_core"] for r in best) >= 25_000),
        ),
    ]
    storm = join_runs[0]  # 50 x 4
    storm_p99 = statistics.median(r["early_p99"] for r in storm)
    storm_bad = max(r["lost"] + r["repeated"] + r["unfinished"] for r in storm)
    all_live = statistics.median(r["all_live_s"] for r in reconnects)
    reconnect_bad = max(r["lost"] + r["repeated"] + r["unfinished"] for r in reconnects)
    targets += [
        (
            "join storm 50 x 4: p99 of live deliveries in the first 1.5 s <= 50 ms",
            f"p99 {spread(storm, 'early_p99')} ms; lost, repeated or unfinished {storm_bad}",
            storm_p99 <= 50 and storm_bad == 0,
        ),
        (
            f"reconnect storm, {reconnect_followers:,} followers: all live again within 2 s "
            "of the new API listening, nothing lost or repeated",
            f"{spread(reconnects, 'all_live_s', '{:.2f}')} s; lost, repeated or unfinished "
            f"{reconnect_bad}",
            all_live <= 2 and reconnect_bad == 0,
        ),
    ]
    pairs = [
        (f"(b) {rows[0]['load']}", rows, theirs, "p99")
        for rows, theirs in zip(gevent, peer_steady, strict=True)
    ]
    pairs += [
        (f"(e) {rows[0]['load']}, first 1.5 s", rows, theirs, "early_p99")
        for rows, theirs in zip(join_runs, peer_joins, strict=True)
    ]
    pairs += [(f"(f) {reconnect_followers:,}, the 5 s after", reconnects, peer_reconnects, "p99")]
    behind = [
        name
        for name, ours, theirs, key in pairs
        if statistics.median(r[key] for r in ours) > statistics.median(r[key] for r in theirs)
    ]
    targets.append(
        (
            "p99 at or below the peer's (resumable-stream) at every load of (b), (e) and (f)",
            "above it at " + ", ".join(behind) if behind else "at or below at every load",
            not behind,
        )
    )
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
until the median p99 passes 10 ms.

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
        + f"""

### (e) Join storms: followers connecting while their sessions generate

The sessions run first ({RATE} chunks/s, 8 s each); then every follower connects from the
start of its session within one second, in two client processes. A delivery is live when
its chunk was appended after the follower connected; latency as in (b).

{join_storm_table(join_runs)}

### (f) Reconnect storm: the API killed with SIGKILL and started again

{reconnect_followers:,} followers (10 a session) at {RATE} chunks/s, live on one API process; its
gunicorn master and worker are killed at once and a new one started on the same port.
Each follower reconnects by itself with `?after=<its last cursor>`, every 50 ms while
the port is closed. Times from when the new API first answered `/healthz` (polled every
0.1 s); "live again": a chunk appended after its reconnection arrived.

{reconnect_table(reconnects)}

### The peer: Vercel's `resumable-stream` at the same loads

`python -m bench.peer` (bench/peer/: the npm package, pinned by its lockfile, in two Node
processes: a producer that makes each stream and a follower server that resumes it for
each client, over plain HTTP), on a redis-server of its own, with the same client
processes; latency from the producer's `Date.now()` in each line, whole milliseconds.
(b): every follower connected before its stream produces, {RATE} lines/s, {chunks} each:

{peer_steady_table(peer_steady)}

(e), as above:

{join_storm_table(peer_joins)}

(f), the follower server killed with SIGKILL and started again; each client resumes with
`skipCharacters`, the characters it has:

{reconnect_table(peer_reconnects)}

The same, but the producer killed with SIGKILL and started again, the process that holds
each stream's chunks (Redis carries only pub/sub and a sentinel key); then one new
follower asks for the first stream. One row a run:

{peer.PRODUCER_KILL_HEADER}
{chr(10).join(peer.producer_kill_row(r) for r in peer_producer_kills)}

The product's p99 beside the peer's (medians of the runs):

{versus_peer(pairs)}

### What a join costs Redis and the API

`python -m bench.joins`: 50 followers each way, on a Redis and API of its own, default
follower limits on (each join takes its two places). Commands from `INFO commandstats`
(a script's own commands included), round trips from `total_reads_processed`, the API
process's CPU from /proc (10 ms ticks: about 0.2 ms per join).

{joins_md}

The peer's join, for comparison (`python -m bench.peer --join-cost 1000`): 1,000 clients
joining one stream that makes a line a second, one after another, each once its first
line came: CPU ms per join of the follower server {peer_follower_ms}, of the producer,
which answers each resume with the stream so far, {peer_producer_ms}.

### A full garbage collection over the API's objects

`python -m bench.gc_pause`: the app built as a gunicorn gevent worker builds it; a full
pass (`gc.collect()`), which under gevent stops every connection of the process, before
and after `gc.freeze()` (what `api/gunicorn_conf.py` does once the app is loaded).

{gc_md}

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
