"""Run the whole stack locally: Redis (embedded if REDIS_URL is unset), a worker, the API.

    rstreams dev [--host 127.0.0.1] [--port 8000] [--worker-concurrency 50]
    python scripts/dev.py [the same options]

Prints the page's address (port 8000 unless it is taken) and leaves it where the `rstreams`
command finds it. Ctrl-C (or SIGTERM, SIGHUP) stops everything it started: the API and the
worker first, which hands its sessions over, then the embedded Redis; a second signal
hurries them.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from types import FrameType

from rstreams import devstack
from rstreams.localredis import LocalRedis, free_port
from shared.errors import ConfigError
from shared.redisconn import redacted
from shared.settings import Settings

DEFAULT_PORT = 8000
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long the worker and the API get to stop before they are killed; a second signal
# kills them at once.
STOP_TIMEOUT_S = 15.0


class StopSignals:
    """Counts Ctrl-C, SIGTERM and SIGHUP. The handler only counts (it never raises), so a
    signal cannot interrupt the start or the stop halfway; the loops look at the count."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> StopSignals:
        """Handle the stop signals in this process from now on."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        return self

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.count += 1

    @property
    def is_stopping(self) -> bool:
        """A first signal came: stop the stack."""
        return self.count >= 1

    @property
    def is_hurried(self) -> bool:
        """A second signal came: stop it now."""
        return self.count >= 2


def is_port_free(host: str, port: int) -> bool:
    """Whether nothing listens on `host:port` (connections in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(host: str, preferred: int = DEFAULT_PORT) -> int:
    """`preferred` when it is free, else a free port, saying so."""
    if is_port_free(host, preferred):
        return preferred
    port = free_port()
    print(f"Port {preferred} is in use; serving on {port} instead.", flush=True)
    return port


def wait_http(
    url: str, proc: subprocess.Popen[bytes], signals: StopSignals, timeout_s: float = 30.0
) -> bool:
    """Wait until `url` answers 200: True; False if a stop signal came first. Exits if
    `proc` exits first or it does not answer in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if signals.is_stopping:
            return False
        if proc.poll() is not None:
            sys.exit(f"the API exited with {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own URL
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    sys.exit(f"the API did not answer {url} within {timeout_s:.0f} s")


def stop_all(procs: list[subprocess.Popen[bytes]], signals: StopSignals) -> None:
    """SIGTERM each process, then wait for all; kill what is left after STOP_TIMEOUT_S, or
    at once on a second signal."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    said_hurry = False
    while any(p.poll() is None for p in procs):
        if signals.is_hurried or time.monotonic() > deadline:
            if not said_hurry:
                said_hurry = True
                print("stopping at once…", flush=True)
            for p in procs:
                if p.poll() is None:
                    _kill_group(p)
        time.sleep(0.05)


def _kill_group(p: subprocess.Popen[bytes]) -> None:
    """Kill `p` and the processes it started (it leads a session of its own): gunicorn's
    worker, killed with its master, would otherwise finish its graceful stop alone."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group is gone already
        pass


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
    signals = StopSignals().install()
    env = dict(os.environ)
    try:
        settings = Settings.from_env(env)
    except ConfigError as e:
        sys.exit(str(e))
    if settings.redis.cluster and not env.get("REDIS_URL"):
        sys.exit("REDIS_CLUSTER needs REDIS_URL naming a node of your cluster")
    bin_dir = os.path.dirname(sys.executable)
    local_redis: LocalRedis | None = None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if not env.get("REDIS_URL"):
            # In a session of its own, like the worker and the API: a Ctrl-C in the terminal
            # reaches only this process, which stops Redis last, once the worker has
            # handed its sessions over through it.
            local_redis = LocalRedis(is_detached=True).start()
            env["REDIS_URL"] = local_redis.url
            print(f"Redis:  embedded {local_redis.binary} at {local_redis.url}", flush=True)
        else:
            print(f"Redis:  {redacted(env['REDIS_URL'])}", flush=True)
        port = args.port or choose_port(args.host)
        env.update(PORT=str(port), HOST=args.host, WEB_CONCURRENCY=env.get("WEB_CONCURRENCY", "1"))
        if args.host not in ("0.0.0.0", "::", "127.0.0.1", "localhost", "::1") and not env.get(
            "ALLOWED_HOSTS"
        ):
            # The address printed below: the API answers loopback names and ALLOWED_HOSTS only.
            env["ALLOWED_HOSTS"] = f"[{args.host}]" if ":" in args.host else args.host
        procs.append(
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
                start_new_session=True,
            )
        )
        procs.append(
            subprocess.Popen(
                [
                    os.path.join(bin_dir, "gunicorn"),
                    "-c",
                    "api/gunicorn_conf.py",
                    "api.app:create_app()",
                ],
                env=env,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                start_new_session=True,
            )
        )
        url = f"http://{args.host}:{port}"
        if wait_http(f"{url}/readyz", procs[1], signals):
            try:
                devstack.write(env, url)
            except OSError as e:
                print(f"(cannot leave the address for `rstreams` to find: {e})", flush=True)
            print(f"\n{_ready_line(settings, url)}\n{_shell_hint(bin_dir)}\n", flush=True)
            while not signals.is_stopping and all(p.poll() is None for p in procs):
                time.sleep(0.2)
            if not signals.is_stopping:
                print("a process of the stack exited; stopping the rest", flush=True)
    finally:
        if signals.is_stopping:
            print("\nstopping…", flush=True)
        devstack.remove(env)
        stop_all(procs, signals)
        if local_redis:
            local_redis.close()


def _ready_line(settings: Settings, url: str) -> str:
    if settings.provider.is_configured:
        models = f"demo, and other models at {settings.provider.base_url}"
    else:
        models = "demo"
    return f"Ready ({models}). Open {url}/   (Ctrl-C stops)"


def _shell_hint(bin_dir: str) -> str:
    command = os.path.join(bin_dir, "rstreams")
    relative = os.path.relpath(command)
    if os.path.exists(command) and not relative.startswith(".."):
        command = relative
    return f"From a shell: {command} generate 'Hello'   (it finds this stack by itself)"


if __name__ == "__main__":
    main()
