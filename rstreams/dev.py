"""Run the whole stack locally: Redis (embedded if REDIS_URL is unset), a worker, the API.

    rstreams dev [--host 127.0.0.1] [--port 8000] [--worker-concurrency 50]
    python scripts/dev.py [the same options]

Prints the page's address; Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request

from shared.errors import ConfigError
from shared.localredis import LocalRedis, free_port
from shared.redisconn import redacted
from shared.settings import Settings


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Wait until `url` answers 200, or fail if `proc` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the API exited with {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own URL
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"the API did not answer {url} within {timeout_s:.0f} s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the local stack, for `scripts/dev.py` and `rstreams dev` alike."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 0)) or None)
    parser.add_argument("--worker-concurrency", type=int, default=50)


def main(argv: list[str] | None = None) -> None:
    """Start Redis, a worker and the API; stop them all on Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> None:
    """Start Redis, a worker and the API with the options `add_arguments` defines."""
    # `kill` and process managers send SIGTERM: stop the stack as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    env = dict(os.environ)
    local_redis = None
    try:
        is_cluster = Settings.from_env(env).redis_cluster
    except ConfigError as e:
        sys.exit(str(e))
    if is_cluster and not env.get("REDIS_URL"):
        sys.exit("REDIS_CLUSTER needs REDIS_URL naming a node of your cluster")
    if not env.get("REDIS_URL"):
        local_redis = LocalRedis().start()
        env["REDIS_URL"] = local_redis.url
        print(f"Redis:  embedded {local_redis.binary} at {local_redis.url}", flush=True)
    else:
        print(f"Redis:  {redacted(env['REDIS_URL'])}", flush=True)
    port = args.port or free_port()
    env.update(PORT=str(port), HOST=args.host, WEB_CONCURRENCY=env.get("WEB_CONCURRENCY", "1"))
    if args.host not in ("0.0.0.0", "::", "127.0.0.1", "localhost", "::1") and not env.get(
        "ALLOWED_HOSTS"
    ):
        # The address printed below: the API answers loopback names and ALLOWED_HOSTS only.
        env["ALLOWED_HOSTS"] = f"[{args.host}]" if ":" in args.host else args.host
    bin_dir = os.path.dirname(sys.executable)
    procs = [
        subprocess.Popen(
            [
                os.path.join(bin_dir, "celery"),
                "-A",
                "worker.app",
                "worker",
                "-P",
                "threads",
                "-c",
                str(args.worker_concurrency),
                "--loglevel",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            env=env,
        ),
        subprocess.Popen(
            [
                os.path.join(bin_dir, "gunicorn"),
                "-c",
                "api/gunicorn_conf.py",
                "api.app:create_app()",
            ],
            env=env,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        ),
    ]
    try:
        wait_http(f"http://{args.host}:{port}/readyz", procs[1])
        model = (
            "demo"
            if not any(
                env.get(k) for k in ("PROVIDER_API_KEY", "OPENROUTER_API_KEY", "OPENAI_API_KEY")
            )
            else "a provider model"
        )
        print(
            f"\nReady ({model}). Open http://{args.host}:{port}/   (Ctrl-C stops)\n"
            f"From a shell: RSTREAMS_URL=http://{args.host}:{port} rstreams generate 'Hello'\n",
            flush=True,
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a process of the stack exited; stopping the rest", flush=True)
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if local_redis:
            local_redis.close()


if __name__ == "__main__":
    main()
