"""Followers joining one followed session one after another, to profile what a join costs.

    .venv/bin/python -m bench.joinloop [--joins 3000] [--profile joins.txt]

One redis-server and one API process of their own (gunicorn gevent, the default follower
limits on), one session created through the API and left queued (no worker), one
follower holding it. Then `--joins` WebSocket followers connect one after another, each
waiting for its first frame, 50 open at a time (the oldest closed as each new one
opens). Prints the joins a second. With `--profile`, py-spy (not a dependency of the
project: `pip install py-spy`) records the API's worker process meanwhile, `record -r 500
-f raw`, into that file: one line per stack and its sample count, the input of a flame
graph.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import pyspy
from bench.joins import connect, start_api
from bench.procstat import family
from tests import client


def run(joins: int, profile: Path | None) -> float:
    """Joins a second."""
    server, api = start_api(Path(tempfile.mkdtemp(prefix="rstreams-joinloop-")), "api-joinloop")
    spy: pyspy.Recording | None = None
    try:
        assert api.proc is not None
        session_id = client.create(api.url, prompt="joined")["sessionId"]
        path = f"/api/streams/{session_id}/ws"
        held = connect(api, path)
        if profile is not None:
            spy = pyspy.attach(family(api.proc.pid)[-1], profile)
        started = time.monotonic()
        opened: list[Any] = []
        for _ in range(joins):
            opened.append(connect(api, path))
            if len(opened) > 50:
                opened.pop(0).close()
        rate = joins / (time.monotonic() - started)
        for sock in [*opened, held]:
            sock.close()
        return rate
    finally:
        if spy is not None:
            spy.stop()
        api.stop()
        server.close()


def main() -> None:
    """Print the joins a second (and write the profile)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=3000)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    print(f"{run(args.joins, args.profile):.0f} joins a second")


if __name__ == "__main__":
    main()
