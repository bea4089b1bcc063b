"""The README's local stack (`scripts/dev.py`, `rstreams dev`) as a new user meets it: its
port, the CLI finding it, and stopping it with Ctrl-C or SIGTERM, once or twice, with the
embedded Redis."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from rstreams import dev
from rstreams.localredis import free_port
from tests import client
from tests.fake_provider import FakeProvider
from tests.procs import ROOT, child_env

RSTREAMS = str(Path(sys.executable).parent / "rstreams")


class DevStack:
    """`scripts/dev.py` in a session of its own, as a terminal runs it: its output read as
    it comes, its process group the one a Ctrl-C in that terminal reaches."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "scripts/dev.py", "--worker-concurrency", "2", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.left_at_exit: list[int] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout_s: float = 60) -> str:
        """The `Ready` line, once it is printed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready = [line for line in self.lines if line.startswith("Ready")]
            if ready:
                return ready[0]
            assert self.proc.poll() is None, self.output
            time.sleep(0.1)
        raise AssertionError(f"no Ready line:\n{self.output}")

    def url(self) -> str:
        line = self.wait_ready()
        return line.split("Open ", 1)[1].split()[0].rstrip("/")

    def descendants(self) -> set[int]:
        """Every process this stack started, however deep (found through /proc)."""
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        found: set[int] = set()
        frontier = {self.proc.pid}
        while frontier:
            children = {pid for pid, ppid in parents.items() if ppid in frontier}
            frontier = children - found
            found |= children
        return found

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait_exit(self, started: set[int], timeout_s: float = 60) -> int:
        """The stack's exit code, once it has exited; `left_at_exit`: which of `started`
        still ran at that moment (found before the rest of the output is read: a process
        left behind holds the output pipe, so the output's end waits for it)."""
        code = self.proc.wait(timeout_s)
        self.left_at_exit = [pid for pid in started if is_alive(pid)]
        self.reader.join(5)
        return code

    def close(self) -> None:
        """Kill whatever is left (after a failed test) and close the output pipe."""
        if self.proc.poll() is None:
            self.kill_all()
        self.reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill_all(self) -> None:
        """Clean up after a failed test: every process it started."""
        for pid in [*self.descendants(), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_quiet_and_all_gone(stack: DevStack) -> None:
    """Nothing noisy in the stack's output, and nothing it started still running when it
    exited (`DevStack.wait_exit`)."""
    output = stack.output
    for noise in ("Traceback", "KeyboardInterrupt", "Connection refused", "Error 111"):
        assert noise not in output, f"{noise!r} in the output:\n{output[-6000:]}"
    assert not stack.left_at_exit, f"processes left running: {stack.left_at_exit}"


@pytest.fixture
def dev_env(tmp_path: Path) -> dict[str, str]:
    """A local stack's environment: the embedded Redis, a runtime folder of its own."""
    env = child_env(XDG_RUNTIME_DIR=str(tmp_path), WEB_KEEPALIVE_S="1", DEMO_TOKENS_PER_S="50")
    for name in ("REDIS_URL", "CELERY_BROKER_URL", "RSTREAMS_URL", "PORT"):
        env.pop(name, None)
    return env


@pytest.fixture
def stacks() -> Iterator[list[DevStack]]:
    started: list[DevStack] = []
    yield started
    for stack in started:
        stack.close()


def test_port_8000_when_it_is_free_and_another_saying_so_when_not() -> None:
    port = free_port()
    assert dev.choose_port("127.0.0.1", port) == port
    with socket.create_server(("127.0.0.1", port)):
        assert dev.choose_port("127.0.0.1", port) != port
    assert dev.DEFAULT_PORT == 8000


@pytest.mark.slow
def test_the_cli_finds_the_running_stack_without_being_told(
    dev_env: dict[str, str], stacks: list[DevStack], tmp_path: Path
) -> None:
    # Port 8000 taken (by us, if nobody else has it): the stack says so and picks another.
    holder = None
    if dev.is_port_free("127.0.0.1", 8000):
        holder = socket.create_server(("127.0.0.1", 8000))
    try:
        stack = DevStack(dev_env)
        stacks.append(stack)
        url = stack.url()
    finally:
        if holder is not None:
            holder.close()
    port = int(url.rsplit(":", 1)[1])
    assert port != 8000
    assert f"Port 8000 is in use; serving on {port} instead." in stack.output
    assert "(it finds this stack by itself)" in stack.output
    # No --url, no RSTREAMS_URL: the command finds the stack by the file it left.
    done = subprocess.run(
        [RSTREAMS, "generate", "found it", "--max-tokens", "3"],
        env=dev_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    session_id = done.stderr.split()[1]
    assert done.stdout == client.text(url, session_id)["text"]
    # RSTREAMS_URL still wins.
    elsewhere = subprocess.run(
        [RSTREAMS, "status", session_id],
        env={**dev_env, "RSTREAMS_URL": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert elsewhere.returncode == 1 and "http://127.0.0.1:9" in elsewhere.stderr
    started = stack.descendants()
    stack.ctrl_c()
    assert stack.wait_exit(started) == 0
    assert_quiet_and_all_gone(stack)
    assert not list(tmp_path.glob("rstreams/*.json"))  # the address went with the stack
    gone = subprocess.run(
        [RSTREAMS, "status", session_id], env=dev_env, capture_output=True, text=True, timeout=60
    )
    assert "cannot reach the API at http://127.0.0.1:8000" in gone.stderr


@pytest.mark.slow
def test_ctrl_c_stops_redis_after_the_worker_handed_its_sessions_over(
    dev_env: dict[str, str], stacks: list[DevStack], fake_provider: FakeProvider
) -> None:
    # A keyless local provider that keeps answering 429: the generation waits in backoff.
    env = {
        **dev_env,
        "PROVIDER_BASE_URL": fake_provider.base_url,
        "PROVIDER_MAX_RETRIES": "100",
        "PROVIDER_BACKOFF_BASE_S": "0.5",
        "PROVIDER_BACKOFF_MAX_S": "1",
    }
    for name in ("PROVIDER_API_KEY", "OPENROUTER_API_KEY", "OPENAI_API_KEY", "MODEL_ALLOWLIST"):
        env.pop(name, None)
    stack = DevStack(env, "--port", str(free_port()))
    stacks.append(stack)
    assert f"other models at {fake_provider.base_url}" in stack.wait_ready()
    model = f"race-{os.getpid()}/fake-429"
    session_id = client.create(stack.url(), prompt="in backoff", model=model)["sessionId"]
    deadline = time.monotonic() + 30
    while len(fake_provider.requests_for(model)) < 2:  # refused, and retrying
        assert time.monotonic() < deadline, stack.output
        time.sleep(0.1)
    assert client.info(stack.url(), session_id)["status"] in ("queued", "running")
    started = stack.descendants()
    stack.ctrl_c()
    assert stack.wait_exit(started) == 0, stack.output
    assert "handing running sessions over" in stack.output
    assert_quiet_and_all_gone(stack)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm-twice", "ctrl-c-twice"])
def test_a_second_signal_hurries_the_stop_and_leaves_nothing_behind(
    dev_env: dict[str, str], stacks: list[DevStack], how: str
) -> None:
    stack = DevStack(dev_env, "--port", str(free_port()))
    stacks.append(stack)
    url = stack.url()
    assert requests.get(url + "/readyz", timeout=10).status_code == 200
    started = stack.descendants()
    assert len(started) >= 3  # Redis, the worker, the API (and its workers)
    for said in ("stopping…", "stopping at once…"):  # what each signal makes it say
        if how == "sigterm-twice":
            stack.proc.send_signal(signal.SIGTERM)  # as `kill` does: the process alone
        else:
            stack.ctrl_c()
        deadline = time.monotonic() + 20  # bounds a hang only
        while said not in stack.output:
            assert time.monotonic() < deadline, stack.output
            time.sleep(0.05)
    assert stack.wait_exit(started) == 0, stack.output
    assert_quiet_and_all_gone(stack)
