"""A Redis Cluster of our own: three masters from `redis-server` binaries, for the tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from rstreams.localredis import LocalRedis, find_redis_server, free_port
from tests.procs import Api, Worker, child_env

SLOTS = 16384
MIN_VERSION = (7, 0)


def server_version(binary: str) -> tuple[int, ...]:
    """`redis-server --version` as numbers, e.g. (7, 0, 15)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise RuntimeError(f"cannot read the version of {binary}: {out!r}")
    return tuple(int(n) for n in match.groups())


def find_cluster_server() -> str:
    """A `redis-server` able to run a cluster node with sharded pub/sub (Redis 7+)."""
    binary = find_redis_server()
    if binary is None:
        raise RuntimeError("no redis-server found: install Redis 7 or newer (apt install redis)")
    version = server_version(binary)
    if version < MIN_VERSION:
        raise RuntimeError(
            f"{binary} is Redis {'.'.join(map(str, version))}; cluster mode needs Redis 7 or "
            "newer (sharded pub/sub): install redis-server 7+ and put it on the PATH"
        )
    return binary


class LocalCluster:
    """`masters` cluster-enabled redis-servers on free ports, slots split evenly."""

    def __init__(self, masters: int = 3) -> None:
        self.binary = find_cluster_server()
        self.ports = [free_port() for _ in range(masters)]
        # The cluster bus defaults to port + 10000, which may be taken or above 65535.
        self.bus_ports = [free_port() for _ in range(masters)]
        self.data_dir = Path(tempfile.mkdtemp(prefix="rstreams-cluster-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """A URL naming one node; a cluster client finds the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def nodes(self) -> list[redis.Redis]:
        """A plain client of each node, in port order."""
        return [redis.Redis(port=p, decode_responses=True) for p in self.ports]

    def start(self, timeout_s: float = 20.0) -> LocalCluster:
        """Start the nodes, give each a third of the slots, introduce them, wait for `ok`."""
        for port, bus in zip(self.ports, self.bus_ports, strict=True):
            folder = self.data_dir / str(port)
            folder.mkdir()
            args = [
                self.binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-port", str(bus),
                "--cluster-config-file", str(folder / "nodes.conf"),
                "--cluster-node-timeout", "5000",
                "--dir", str(folder),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", str(folder / "redis.log"),
            ]  # fmt: skip
            self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout_s
        nodes = self.nodes()
        for node in nodes:
            self._wait(lambda n=node: bool(n.ping()), deadline)
        step = SLOTS // len(nodes)
        for i, node in enumerate(nodes):
            last = SLOTS - 1 if i == len(nodes) - 1 else (i + 1) * step - 1
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
        for port, bus in zip(self.ports[1:], self.bus_ports[1:], strict=True):
            nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)
        self._wait(
            lambda: all(
                "cluster_state:ok" in str(n.execute_command("CLUSTER", "INFO")) for n in nodes
            ),
            deadline,
        )
        for node in nodes:
            node.close()
        return self

    def _wait(self, ready: Callable[[], bool], deadline: float) -> None:
        while True:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a cluster node exited; see {self.data_dir}/*/redis.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not form; see {self.data_dir}/*/redis.log")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop every node and remove their folders."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@contextmanager
def cluster_stack(
    logs_dir: Path, name: str, **overrides: str
) -> Iterator[tuple[LocalCluster, Api]]:
    """A 3-master cluster, a broker beside it, one worker and one API in cluster mode;
    everything stopped on the way out."""
    cluster = LocalCluster().start()
    broker = LocalRedis().start()
    env = child_env(
        REDIS_CLUSTER="true",
        REDIS_URL=cluster.url,
        CELERY_BROKER_URL=broker.url,
        CELERY_QUEUE=f"q-{name}",
        DEMO_TOKENS_PER_S="50",
        XREAD_BLOCK_MS="1000",
        **overrides,
    )
    worker = api = None
    try:
        worker = Worker(env, logs_dir, name=f"{name}-worker").start()
        api = Api(env, logs_dir, name=f"{name}-api").start()
        yield cluster, api
    finally:
        for proc in (api, worker):
            if proc is not None:
                proc.stop(timeout_s=10)
        broker.close()
        cluster.close()
