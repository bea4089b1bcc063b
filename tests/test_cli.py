"""The `rstreams` command, run as a user runs it, against a real API, worker and Redis."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

from nanoid import generate as nanoid

from rstreams import Client
from rstreams.localredis import LocalRedis, free_port
from tests.procs import Api, child_env

RSTREAMS = str(Path(sys.executable).parent / "rstreams")


def rstreams(url: str, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the command to its end."""
    return subprocess.run(
        [RSTREAMS, "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=child_env(),
    )


def session_id_of(stderr: str) -> str:
    match = re.search(r"^session (\S+) ", stderr, re.MULTILINE)
    assert match, stderr
    return match.group(1)


def test_generate_prints_the_answer(api: Api) -> None:
    done = rstreams(api.url, "generate", "tell me about rivers", "--max-tokens", "25")
    assert done.returncode == 0, done.stderr
    session_id = session_id_of(done.stderr)
    with Client(api.url) as client:
        assert done.stdout == client.text(session_id)  # to a pipe: the text, nothing else
        assert client.status(session_id)["chunks"] == 25
    assert "Traceback" not in done.stderr


def _sigint_as_at_a_terminal() -> None:
    """A command typed at a terminal gets SIGINT's default action; a test run started as
    a background job (`pytest &` in a script) passes its children SIGINT ignored, which
    the CLI respects (`nohup`-style) and so would not detach."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_detaches_and_the_printed_command_prints_exactly_the_rest(api: Api) -> None:
    proc = subprocess.Popen(
        # 8 s at 50 tokens/s: still running when the Ctrl-C comes, even on a busy machine.
        [RSTREAMS, "--url", api.url, "generate", "a long one", "--max-tokens", "400"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        preexec_fn=_sigint_as_at_a_terminal,
    )
    assert proc.stderr is not None
    session_id = session_id_of(proc.stderr.readline())
    client = Client(api.url)
    deadline = time.monotonic() + 30
    while client.status(session_id)["chunks"] < 10:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    first_part, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 130, stderr
    assert client.status(session_id)["status"] == "running"  # detached, not cancelled
    match = re.search(
        r"^Detached; the answer keeps generating\. Resume with: (rstreams follow .+)$",
        stderr,
        re.MULTILINE,
    )
    assert match, stderr
    resume = match.group(1).split()
    assert resume[:3] == ["rstreams", "follow", session_id] and resume[3] == "--after"

    rest = rstreams(api.url, *resume[1:])
    assert rest.returncode == 0, rest.stderr
    assert client.status(session_id)["status"] == "completed"
    assert first_part and rest.stdout
    assert first_part + rest.stdout == client.text(session_id)  # nothing lost or repeated
    done_cursor = list(client.follow(session_id))[-1].id
    past_the_end = rstreams(api.url, "follow", session_id, "--after", done_cursor)
    assert (past_the_end.returncode, past_the_end.stdout) == (0, "")
    client.close()


def test_cancel_status_and_text(api: Api) -> None:
    started = rstreams(api.url, "generate", "stop me", "--max-tokens", "500", "--no-follow")
    assert started.returncode == 0, started.stderr
    session_id = started.stdout.strip()

    cancelled = rstreams(api.url, "cancel", session_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == f"{session_id} cancelled\n"

    followed = rstreams(api.url, "follow", session_id)
    assert followed.returncode == 1
    assert "cancelled" in followed.stderr

    status = rstreams(api.url, "status", session_id)
    assert status.returncode == 0
    assert re.search(r"^status\s+cancelled$", status.stdout, re.MULTILINE), status.stdout
    as_json = rstreams(api.url, "status", session_id, "--json")
    assert '"status": "cancelled"' in as_json.stdout

    text = rstreams(api.url, "text", session_id)
    assert text.returncode == 0
    with Client(api.url) as client:
        assert text.stdout == client.text(session_id)


def test_errors_are_one_line_and_a_nonzero_exit(api: Api) -> None:
    unknown = nanoid()
    dashed = "-" + unknown[1:]  # a nanoid may start with "-": an id all the same, no option
    for args in (["follow", unknown], ["status", unknown], ["cancel", unknown], ["text", dashed]):
        failed = rstreams(api.url, *args)
        assert failed.returncode == 1
        assert failed.stderr.count("\n") == 1 and "not_found" in failed.stderr, failed.stderr

    bad_model = rstreams(api.url, "generate", "hi", "--model", "no-such-model")
    assert bad_model.returncode == 1
    assert bad_model.stderr.count("\n") == 1 and "unknown_model" in bad_model.stderr

    down = rstreams(f"http://127.0.0.1:{free_port()}", "status", unknown)
    assert down.returncode == 1
    assert down.stderr.count("\n") == 1 and "cannot reach the API" in down.stderr


def on_a_terminal(api: Api, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the command with stderr on a terminal (100 columns); what the terminal showed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    seen = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # EIO: the command closed its end
                return
            if not data:
                return
            seen.extend(data)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    proc = subprocess.run(
        [RSTREAMS, "--url", api.url, *args],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=child_env(TERM="xterm-256color", COLUMNS="100"),
        text=True,
        timeout=60,
    )
    os.close(follower)
    reader.join(timeout=10)
    os.close(leader)
    return proc, seen.decode(errors="replace")


def test_a_terminal_on_stderr_gets_a_live_progress_line(api: Api) -> None:
    proc, terminal = on_a_terminal(api, "generate", "watch it", "--max-tokens", "40")
    assert proc.returncode == 0, terminal
    session_id = session_id_of(terminal.replace("\r\n", "\n"))
    with Client(api.url) as client:
        assert proc.stdout == client.text(session_id)  # the progress line stays off stdout
    assert "40 chunks ·" in terminal  # the live line, drawn last just before it is cleared
    assert "completed: 40 chunks in" in terminal  # the summary once it is done


def test_python_m_rstreams_is_the_same_command() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "rstreams", "--help"], capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0
    for command in ("generate", "follow", "status", "text", "cancel", "dev"):
        assert command in shown.stdout


def test_too_many_requests_says_when_to_retry(make_stack: Any, own_redis: LocalRedis) -> None:
    # A Redis of its own: the open-mode count is per client address, and every other test
    # creates sessions from this one.
    limited = make_stack(
        REDIS_URL=own_redis.url,
        CELERY_BROKER_URL=own_redis.url,
        RATE_CREATES_PER_MIN="1",
        RATE_WINDOW_S="60",
    ).api()
    first = rstreams(limited.url, "generate", "one", "--max-tokens", "2", "--no-follow")
    assert first.returncode == 0, first.stderr
    second = rstreams(limited.url, "generate", "two", "--max-tokens", "2", "--no-follow")
    assert second.returncode == 1
    assert second.stderr.count("\n") == 1, second.stderr
    assert "too_many_requests" in second.stderr
    assert re.search(r"retry after \d+ s$", second.stderr.strip()), second.stderr


def test_dev_runs_the_local_stack_and_ctrl_c_stops_it(stack_env: dict[str, str]) -> None:
    port = free_port()
    env = {**stack_env, "CELERY_QUEUE": f"q-dev-{port}"}  # its worker takes only its own jobs
    dev = subprocess.Popen(
        [RSTREAMS, "dev", "--port", str(port), "--worker-concurrency", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    assert dev.stdout is not None
    try:
        for line in dev.stdout:
            if line.startswith("Ready"):
                break
        assert f"http://127.0.0.1:{port}/" in line
        url = f"http://127.0.0.1:{port}"
        done = rstreams(url, "generate", "from the local stack", "--max-tokens", "5")
        assert done.returncode == 0, done.stderr
        with Client(url) as client:
            assert done.stdout == client.text(session_id_of(done.stderr))
    finally:
        dev.send_signal(signal.SIGINT)
        dev.communicate(timeout=30)
    assert dev.returncode == 0
    down = rstreams(f"http://127.0.0.1:{port}", "status", nanoid())
    assert "cannot reach the API" in down.stderr  # the API it started is gone with it


def test_reasoning_goes_to_stderr_and_json_prints_every_event(api: Api) -> None:
    done = rstreams(api.url, "generate", "think first", "--model", "demo-reasoning")
    assert done.returncode == 0, done.stderr
    session_id = session_id_of(done.stderr)
    with Client(api.url) as client:
        message = client.message(session_id)["message"]
        assert done.stdout == client.text(session_id) == message["content"]  # the text alone
    assert message["reasoning"] in done.stderr  # to a pipe: plain, whole
    assert "\x1b[" not in done.stderr

    as_json = rstreams(api.url, "follow", session_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    frames = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [f["type"] for f in frames][:2] == ["status", "status"]
    assert "".join(f["text"] for f in frames if f["type"] == "reasoning") == message["reasoning"]
    assert frames[-1]["type"] == "done"
    assert message["reasoning"] not in as_json.stderr


def test_tool_calls_are_shown_on_stderr(api: Api) -> None:
    weather = {"type": "function", "function": {"name": "get_weather"}}
    with Client(api.url) as client:
        session_id = client.generate("Weather in Oslo?", model="demo-tools", tools=[weather])
        done = rstreams(api.url, "follow", session_id.session_id)
        call = client.message(session_id.session_id)["message"]["tool_calls"][0]
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert f"tool call: get_weather({call['function']['arguments']})" in done.stderr


def test_reasoning_is_dimmed_on_a_terminal(api: Api) -> None:
    proc, terminal = on_a_terminal(api, "generate", "dim thoughts", "--model", "demo-reasoning")
    assert proc.returncode == 0, terminal
    assert "\x1b[2mThinking about dim thoughts." in terminal
    with Client(api.url) as client:
        assert proc.stdout == client.text(session_id_of(terminal.replace("\r\n", "\n")))
