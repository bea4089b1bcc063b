"""What one Redis command costs its client's CPU, as the API makes it.

    .venv/bin/python -m bench.roundtrip [--commands 3000] [--runs 3]

One redis-server of its own. A client made by `shared.redisconn.connect` (the product's
pool) runs `--commands` `HGET`s one after another, in a process patched by gevent (as
gunicorn's gevent worker runs the API) and in a plain one; the process's CPU time
(`time.process_time`) is divided by the commands. In the same processes: what one look
for unread input on an idle connection costs (what redis-py's pool does before it hands
out a connection), with `select.poll` as the process has it (gevent's, once patched) and
with the system's. Prints the median of `--runs` runs with the lowest and highest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from bench.stats import median_spread
from rstreams.localredis import LocalRedis


def _child(mode: str, url: str, commands: int, runs: int) -> dict[str, list[float]]:
    """Measure in this process (patched by gevent first when `mode` is "gevent")."""
    if mode == "gevent":
        from gevent import monkey

        monkey.patch_all()
    import select
    import socket
    import time

    from shared import redisconn

    r = redisconn.connect(url)
    r.hset("bench:roundtrip", "status", "running")
    out: dict[str, list[float]] = {"hget": [], "poll": [], "system poll": []}
    for _ in range(runs):
        started = time.process_time()
        for _ in range(commands):
            r.hget("bench:roundtrip", "status")
        out["hget"].append((time.process_time() - started) / commands * 1e6)
    idle, _other = socket.socketpair()
    for name, poll in (("poll", select.poll), ("system poll", redisconn._system_poll)):
        for _ in range(runs):
            started = time.process_time()
            for _ in range(commands):
                poller = poll()
                poller.register(idle, select.POLLIN)
                poller.poll(0)
            out[name].append((time.process_time() - started) / commands * 1e6)
    r.delete("bench:roundtrip")
    return out


def run(commands: int, runs: int) -> dict[str, dict[str, list[float]]]:
    """Each mode's figures, measured in a process of its own."""
    server = LocalRedis().start()
    try:
        results = {}
        for mode in ("gevent", "plain"):
            args = ["--child", mode, server.url, "--commands", str(commands), "--runs", str(runs)]
            done = subprocess.run(
                [sys.executable, "-m", "bench.roundtrip", *args],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        return results
    finally:
        server.close()


def main() -> None:
    """Print the table (or, with `--child`, one process's figures as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "URL"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.commands, args.runs)))
        return
    results: dict[str, Any] = run(args.commands, args.runs)
    print("| process | CPU us per HGET | an idle socket's poll, us | the system's poll, us |")
    print("|---|---|---|---|")
    for mode, figures in results.items():
        cells = [median_spread(figures[k], "{:,.1f}") for k in ("hget", "poll", "system poll")]
        print(f"| {mode} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
