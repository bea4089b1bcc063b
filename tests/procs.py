"""Real processes for the tests: a Celery worker and the API under gunicorn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from rstreams.localredis import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class Proc:
    """A child process whose output goes to a log file the test can read."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.terminated = False

    def start(self) -> Proc:
        """Start the process, appending to its log."""
        log = open(self.log_path, "ab")  # the child holds it open for its life
        self.proc = subprocess.Popen(
            self.args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.terminated = False
        return self

    def log(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> None:
        """SIGTERM, without waiting (`stop` then waits)."""
        if self.proc and self.proc.poll() is None and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc and self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()


class Worker(Proc):
    """`celery -A worker.app worker` with the threads pool."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str = "worker") -> None:
        super().__init__(
            name,
            [
                str(BIN / "celery"),
                "-A",
                "worker.app",
                "worker",
                "-P",
                "threads",  # concurrency from WORKER_CONCURRENCY, as in production
                "--loglevel",
                "INFO",
                "--without-mingle",
                "--without-gossip",
                "-n",
                f"{name}@%h",
            ],
            env,
            log_dir,
        )

    def start(self, timeout_s: float = 30) -> Worker:
        """Start and wait until Celery says it is ready."""
        super().start()
        deadline = time.monotonic() + timeout_s
        while " ready." not in self.log():
            assert self.proc and self.proc.poll() is None, f"worker exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"worker not ready:\n{self.log()}"
            time.sleep(0.1)
        return self


class Api(Proc):
    """The API under gunicorn's gevent worker, as the Procfile runs it."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str = "api", port: int = 0):
        self.port = port or free_port()
        env = {**env, "PORT": str(self.port), "HOST": "127.0.0.1", "WEB_CONCURRENCY": "1"}
        super().__init__(
            name,
            [str(BIN / "gunicorn"), "-c", "api/gunicorn_conf.py", "api.app:create_app()"],
            env,
            log_dir,
        )

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """ws://127.0.0.1:<port>"""
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> Api:
        """Start and wait until /healthz answers."""
        super().start()
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc and self.proc.poll() is None, f"API exited:\n{self.log()}"
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"API not up:\n{self.log()}"
            time.sleep(0.1)


# What a child process may inherit from the test process: what finding programs, files,
# the locale and the CA certificates needs. Nothing the stack reads as configuration (an
# exported API_KEYS or REDIS_URL would change what the tests test): the tests set that.
INHERITED = {
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "VIRTUAL_ENV",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
}
INHERITED_PREFIXES = ("LC_", "XDG_")


def child_env(**overrides: str) -> dict[str, str]:
    """An environment for a child process: the allowed part of the test process's, and
    `overrides`."""
    env = {
        k: v for k, v in os.environ.items() if k in INHERITED or k.startswith(INHERITED_PREFIXES)
    }
    env.update(overrides)
    return env
