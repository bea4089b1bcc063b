"""Every code snippet of the README runs as written against a real stack, or is listed here
with the reason it is not run: a new snippet must be one or the other."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.procs import ROOT, Api, child_env

SNIPPET = re.compile(r"```(\w*)\n(.*?)```", re.S)

TEST_INSTALL = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python"
# Snippets not run here, by their first line, and why.
NOT_RUN = {
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[local]'": "CI runs it (.ci/run)",
    TEST_INSTALL + " -m pytest": "CI runs it",
    TEST_INSTALL + " -m bench": "ten minutes of benchmarks",
    "const stream = new ResumableStreams().resume(sessionId, { token: streamToken });": (
        "needs a backend's session and token: tests/test_browser_client.py keyed mode"
    ),
    "const { startStream, resumeStream, stopStream, content, status, chunks,": (
        "inside a React component: tests/test_react.py runs the example"
    ),
    ".venv/bin/python -m api.apikeys new web": "keyed mode: tests/test_auth.py",
    "const chat = useChat({": (
        "inside a React component: tests/test_chat.py runs the AI SDK's own code on the route"
    ),
    "const transport = new WebSocketChatTransport({": (
        "a browser's: tests/test_chat_ws.py runs the same transport in Node"
    ),
    'import { ResumableChatTransport } from "@resumable-streams/ai-sdk";': (
        "inside a React component: tests/test_ai_sdk_browser.py runs the chat example"
    ),
    "REDIS_URL='redis://:<password>@redis.internal:6379/0'": "settings, not commands",
    "REDIS_CLUSTER=true": "settings, not commands",
}


def snippets() -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in SNIPPET.finditer((ROOT / "README.md").read_text())]


def to_run(language: str) -> list[str]:
    return [
        code
        for lang, code in snippets()
        if lang == language and not any(code.startswith(first) for first in NOT_RUN)
    ]


def here(code: str, api: Api) -> str:
    """The one change: the stack under test is not on port 8000 (a shared machine's CI may
    have something there)."""
    return code.replace("127.0.0.1:8000", api.url.split("//", 1)[1])


def test_every_snippet_is_run_or_says_why_not() -> None:
    for first in NOT_RUN:
        assert any(code.startswith(first) for _lang, code in snippets()), f"gone: {first}"
    assert len(to_run("sh")) == 2 and len(to_run("python")) == 4 and len(to_run("js")) == 1
    assert {lang for lang, _code in snippets()} <= {"sh", "python", "js", "ts"}


@pytest.mark.slow
def test_the_shell_snippets_run_as_written(api: Api, tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = child_env(RSTREAMS_URL=api.url, XDG_RUNTIME_DIR=str(tmp_path))
    for code in to_run("sh"):
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", here(code, api)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert result.returncode == 0, f"{code}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert '"type":"done"' in result.stdout or "status" in result.stdout, result.stdout


@pytest.mark.slow
def test_the_python_snippets_run_as_written(api: Api, tmp_path: Path) -> None:
    env = child_env(RSTREAMS_URL=api.url, XDG_RUNTIME_DIR=str(tmp_path))
    for code in to_run("python"):
        result = subprocess.run(
            [sys.executable, "-c", here(code, api)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert result.returncode == 0, f"{code}\n{result.stderr[-3000:]}"
        assert "done" in result.stdout or "stop" in result.stdout, result.stdout


@pytest.mark.slow
def test_the_browser_snippet_runs_as_written(browser: Any, api: Api) -> None:
    (code,) = to_run("js")
    page = browser.new_context().new_page()
    try:
        page.goto(api.url + "/healthz")
        # The page's own elements the snippet writes to.
        page.evaluate(
            """() => {
              window.output = document.createElement("pre");
              window.badge = document.createElement("span");
            }"""
        )
        page.add_script_tag(type="module", content=code + "\nwindow.final = final;")
        page.wait_for_function("() => window.final", timeout=30_000)
        final = page.evaluate("() => ({ status: window.final.status, text: output.textContent })")
    finally:
        page.context.close()
    assert final["status"] == "completed" and final["text"], final
