"""How long one full pass of the garbage collector takes over the API's objects.

    .venv/bin/python -m bench.gc_pause [--passes 5]

Builds the app in this process as a gunicorn gevent worker does (gevent's patches, then
`create_app()`, no Redis needed), then times full passes (`gc.collect()`) before and
after `gc.freeze()`, which `api/gunicorn_conf.py` runs once the app is loaded. Under
gevent a pass stops every connection of the process at once. Prints a Markdown table:
the median pass with the fastest and slowest in brackets, and the objects it walked.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

from bench.stats import median_spread


def passes(n: int) -> list[float]:
    """`n` full passes, in ms."""
    took = []
    for _ in range(n):
        started = time.perf_counter()
        gc.collect()
        took.append((time.perf_counter() - started) * 1000)
    return took


def row(name: str, took: list[float]) -> str:
    walked = len(gc.get_objects())
    return f"| {name} | {median_spread(took, '{:.1f}')} | {walked:,} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    from gevent import monkey

    monkey.patch_all()
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:1/0")  # never connected to
    from api.app import create_app

    app = create_app()
    print("| app objects | full pass ms | objects the pass walks |\n|---|---|---|")
    print(row("not frozen", passes(args.passes)), flush=True)
    gc.freeze()
    print(row("frozen (`gc.freeze()`)", passes(args.passes)))
    del app


if __name__ == "__main__":
    main()
