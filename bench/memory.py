"""Redis memory per session, measured through the real append path.

    .venv/bin/python -m bench.memory [--chunks 50 200 1000] [--sessions 1000] [--reasoning 0.8]

For each answer length, stores `--sessions` sessions on a redis-server of its own the way
the product does (the API's `create_session`, a worker's lease, `running` status, every
chunk through the appender's pipelined atomic script, `done`, the lease released and the
reaper's index pruned), with the demo provider's text. Reports MEMORY USAGE (exact:
SAMPLES 0) of one session's keys, and the growth of INFO memory's `used_memory` per
1,000 sessions, which includes Redis's own overhead per key (dict entries, expiry).
`--reasoning 0.8` stores answers whose first 80 % of events are reasoning, as a reasoning
model's are, with the same demo text.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess

import redis

from bench.__main__ import machine
from rstreams.localredis import LocalRedis, find_redis_server
from shared import keys, store
from shared.jobs import GenerationRequest, Message
from shared.settings import Settings
from worker.providers.demo import demo_chunk

PROMPT = "How much memory does one answer take?"
PIPELINE = 1000  # chunks per round trip, as the appender sends them under load


def parts_of(chunks: int, reasoning: float) -> list[store.Part]:
    """`chunks` content events of demo text, the first `reasoning` share of them reasoning."""
    thinking = round(chunks * reasoning)
    return [
        store.Part(
            store.EventType.REASONING if i < thinking else store.EventType.CHUNK,
            demo_chunk(PROMPT, i),
        )
        for i in range(chunks)
    ]


def store_sessions(
    r: redis.Redis, prefix: str, sessions: int, parts: list[store.Part], ttl_s: int
) -> None:
    """Store `sessions` completed sessions of `parts` each, as the product does."""
    request = GenerationRequest(model="demo", messages=(Message("user", PROMPT),))
    chunks = len(parts)
    store.load_scripts(r)
    for n in range(sessions):
        session_id = f"{prefix}{n:0{21 - len(prefix)}d}"
        store.create_session(r, session_id, request, queue="generate")
        state, token = store.acquire_lease(r, session_id, 15_000, worker="bench-host:4242")
        assert state == "ok" and token is not None
        store.append_status(r, session_id, "running", token=token, ttl_s=ttl_s, attempt=1)
        for start in range(0, chunks, PIPELINE):
            pipe = r.pipeline(transaction=False)
            for index in range(start, min(start + PIPELINE, chunks)):
                store.queue_content(
                    pipe,
                    session_id,
                    index,
                    parts[index],
                    token=token,
                    maxlen=100_000,
                    ttl_s=ttl_s,
                )
            for answer in pipe.execute():
                store.content_result(r, session_id, answer)
        usage = {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": chunks + 8}
        store.append_done(
            r,
            session_id,
            token=token,
            ttl_s=ttl_s,
            finish_reason="stop",
            chunks=chunks,
            usage=usage,
        )
        store.release_lease(r, session_id, token)
        r.zrem(keys.active(), session_id)  # what the reaper's next pass does


def key_bytes(r: redis.Redis, key: str) -> int:
    """MEMORY USAGE of `key`, counting every element."""
    return int(r.memory_usage(key, samples=0) or 0)


def measure(r: redis.Redis, parts: list[store.Part], sessions: int, ttl_s: int) -> dict[str, float]:
    """Store the sessions; the bytes of one session's keys and the growth per 1,000."""
    r.flushall()
    before = int(r.info("memory")["used_memory"])
    prefix = f"m{len(parts)}x"
    store_sessions(r, prefix, sessions, parts, ttl_s)
    after = int(r.info("memory")["used_memory"])
    sample = [
        f"{prefix}{n:0{21 - len(prefix)}d}" for n in range(0, sessions, max(1, sessions // 20))
    ]
    events = statistics.median(key_bytes(r, keys.events(s)) for s in sample)
    meta = statistics.median(key_bytes(r, keys.meta(s)) for s in sample)
    text_bytes = sum(len(p.text.encode()) for p in parts)
    return {
        "events": events,
        "meta": meta,
        "text": text_bytes,
        "per_1000": (after - before) / sessions * 1000,
        "leftover": r.dbsize() - 2 * sessions,
    }


def main() -> None:
    """Print a Markdown table of the memory per session."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument(
        "--reasoning", type=float, default=0.0, help="the share of events that are reasoning"
    )
    args = parser.parse_args()
    settings = Settings.from_env({})
    binary = find_redis_server() or "redis-server"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    print(f"Machine: {machine()}")
    print(f"Server: {version.stdout.strip()}")
    share = f", {args.reasoning:.0%} of the events reasoning" if args.reasoning else ""
    print(f"{args.sessions} completed sessions per row, demo text{share}")
    print(f"retention {settings.stream_ttl_s} s\n")
    print(
        "| chunks | text bytes | events stream (MEMORY USAGE) | meta hash "
        "| events + meta | used_memory growth per 1,000 sessions |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    server = LocalRedis().start()
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        for chunks in args.chunks:
            m = measure(r, parts_of(chunks, args.reasoning), args.sessions, settings.stream_ttl_s)
            assert m["leftover"] == 0, f"{m['leftover']} keys besides events and meta"
            print(
                f"| {chunks} | {m['text']:,.0f} | {m['events']:,.0f} B | {m['meta']:,.0f} B | "
                f"{m['events'] + m['meta']:,.0f} B | {m['per_1000'] / 2**20:,.2f} MiB |"
            )
    finally:
        server.close()


if __name__ == "__main__":
    main()
