"""The AI SDK package (web/ai-sdk): its unit tests, its mapping against the API's chunks for
the same session, and the AI SDK chat example (web/chat-example) in Chromium against the
real stack: `useChat` with `resume: true` over DefaultChatTransport (reload, a second tab,
stop) and over ResumableChatTransport (the API killed mid-answer), reasoning and tools."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from playwright.sync_api import Page, expect

from api import examples
from api.app import create_app
from rstreams.localredis import free_port
from shared.settings import ApiSettings, Settings
from tests import client
from tests.browser import screenshot_path
from tests.node import NODE_ENV, WEB, assert_vitest_passes, build_web, tool
from tests.procs import Api

SLOW_TIMEOUT_MS = 60_000
PACKAGE = WEB / "ai-sdk"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def web_build() -> Path:
    """web/ installed from its lockfile and built; the chat example's dist/."""
    build_web()
    dist = WEB / "chat-example" / "dist"
    assert (dist / "index.html").is_file()
    return dist


def test_the_transport_and_its_mapping_pass_their_unit_tests(web_build: Path) -> None:
    assert_vitest_passes(PACKAGE)


def test_the_package_is_esm_with_types_and_leaves_ai_to_the_app(web_build: Path) -> None:
    bundle = (PACKAGE / "dist" / "index.js").read_text()
    assert "ResumableChatTransport = class" in bundle and "ResumableStreams = class" in bundle
    assert not re.findall(r"""^import .* from ["']([^"']+)["'];?$""", bundle, re.M)
    declarations = (PACKAGE / "dist" / "index.d.ts").read_text()
    assert "ResumableChatTransport" in declarations
    for path in (PACKAGE / "dist").glob("*.d.ts"):
        assert "api/static" not in path.read_text(), path.name
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert manifest["name"] == "@resumable-streams/ai-sdk"
    assert set(manifest["peerDependencies"]) == {"ai"}
    assert manifest["devDependencies"]["ai"] == "7.0.173"  # exact, as the example's
    example = json.loads((WEB / "chat-example" / "package.json").read_text())["dependencies"]
    assert example["ai"] == "7.0.173" and re.fullmatch(r"\d+\.\d+\.\d+", example["@ai-sdk/react"])


# --- the API serves the example --------------------------------------------------------


def test_the_chat_example_is_served_public_or_says_how_to_build_it(
    web_build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed = Settings(api=ApiSettings(api_keys=(("app", "0" * 64),), stream_token_secret="s" * 32))
    http = create_app(keyed).test_client()
    with http.get("/examples/chat/") as page:
        assert page.status_code == 200 and page.mimetype == "text/html"
        script = re.search(r'src="/examples/chat/(assets/[^"]+\.js)"', page.get_data(as_text=True))
    assert script
    with http.get(f"/examples/chat/{script.group(1)}") as asset:
        assert asset.status_code == 200 and "javascript" in asset.mimetype
    with http.get("/examples/chat/../../pyproject.toml") as escape:
        assert escape.status_code == 404

    monkeypatch.setattr(examples, "CHAT_DIST", tmp_path / "missing")
    for path in ("/examples/chat/", "/examples/chat/assets/index.js"):
        response = http.get(path)
        assert response.status_code == 404 and response.json is not None
        assert examples.BUILD_COMMAND in response.json["error"]["message"]


# --- one mapping in two languages ------------------------------------------------------


def _chat(api: Api, body: dict[str, Any], stop_after_text: bool = False) -> dict[str, Any]:
    """POST /api/chat; the session's id, its message id and the UI message chunks sent,
    up to `[DONE]` (with `stop_after_text`, the chat's stream is deleted after its first
    text)."""
    chat_id = f"drift-{uuid.uuid4().hex}"
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Weather in Paris?"}]}
    chat = {"id": chat_id, "messages": [message], "trigger": "submit-message", **body}
    chunks = []
    with requests.post(f"{api.url}/api/chat", json=chat, stream=True, timeout=30) as response:
        assert response.status_code == 200, response.text
        for line in client.sse_lines(response):
            if line == "data: [DONE]":
                break
            if line.startswith("data: "):
                chunks.append(json.loads(line[len("data: ") :]))
                if stop_after_text and chunks[-1]["type"] == "text-delta":
                    stop_after_text = False
                    stopped = requests.delete(f"{api.url}/api/chat/{chat_id}/stream", timeout=10)
                    assert stopped.status_code == 202, stopped.text
        return {
            "sessionId": response.headers["X-Session-Id"],
            "messageId": response.headers["X-Message-Id"],
            "chunks": chunks,
        }


def test_the_packages_mapping_of_sessions_equals_the_chunks_the_api_sends(
    api: Api, web_build: Path
) -> None:
    sessions = [
        _chat(api, {"model": "demo-reasoning", "max_tokens": 30}),
        _chat(api, {"model": "demo-tools", "max_tokens": 30, "tools": [WEATHER_TOOL]}),
        _chat(api, {"model": "demo", "max_tokens": 500}, stop_after_text=True),
    ]
    for session in sessions:
        session["events"] = client.sse_follow(api.url, session["sessionId"]).events

    result = subprocess.run(
        [tool("node"), str(PACKAGE / "test" / "map-events.mjs")],
        input=json.dumps([{"messageId": s["messageId"], "events": s["events"]} for s in sessions]),
        capture_output=True,
        text=True,
        timeout=60,
        env=NODE_ENV,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    mapped = json.loads(result.stdout)
    for session, chunks in zip(sessions, mapped, strict=True):
        assert chunks == session["chunks"]
    # The three cover every kind of block and end.
    kinds = {chunk["type"] for chunks in mapped for chunk in chunks}
    assert {"reasoning-delta", "text-delta", "tool-input-available", "finish", "abort"} <= kinds


# --- the example page in Chromium ------------------------------------------------------


class ChatPage:
    """The chat example in a browser context of its own (one per test: its own storage)."""

    def __init__(self, context: Any, base_url: str) -> None:
        self.context = context
        self.page: Page = context.new_page()
        self.base_url = base_url

    def open(self, query: str = "") -> None:
        self.page.goto(f"{self.base_url}/examples/chat/{query}")
        expect(self.page).to_have_url(re.compile(r"[?&]chat="))

    @property
    def url(self) -> str:
        return self.page.url

    def ask(self, prompt: str, max_tokens: int, model: str = "demo") -> None:
        self.page.get_by_test_id("model").select_option(model)
        self.page.get_by_test_id("prompt").fill(prompt)
        self.page.get_by_test_id("max-tokens").fill(str(max_tokens))
        self.page.get_by_test_id("send").click()

    def answer_locator(self) -> Any:
        return self.page.locator("[data-testid=message][data-role=assistant]").last

    def session_id(self) -> str:
        """The session of the answer shown: its message id is `msg-<sessionId>`."""
        expect(self.answer_locator()).to_have_attribute("data-message-id", re.compile("^msg-"))
        return str(self.answer_locator().get_attribute("data-message-id"))[len("msg-") :]

    def wait_for_text(self) -> None:
        """Until the answer shows some text."""
        expect(self.answer_locator().get_by_test_id("text").first).not_to_be_empty(
            timeout=SLOW_TIMEOUT_MS
        )

    def answer(self) -> str:
        parts = self.answer_locator().get_by_test_id("text").all_text_contents()
        return "".join(parts)

    def expect_finish(self, reason: str) -> None:
        expect(self.page.get_by_test_id("finish")).to_have_text(reason, timeout=SLOW_TIMEOUT_MS)
        expect(self.page.get_by_test_id("status")).to_have_text("ready")

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=str(screenshot_path(name)), full_page=True)


@pytest.fixture
def chat(browser: Any) -> Iterator[Any]:
    """`chat(api, name)`: a ChatPage in a new context; more pages of it with `.context`."""
    contexts: list[tuple[Any, str]] = []

    def make(api: Api, name: str) -> ChatPage:
        context = browser.new_context()
        contexts.append((context, name))
        return ChatPage(context, api.url)

    yield make
    for context, name in contexts:
        for n, page in enumerate(context.pages):
            page.screenshot(path=str(screenshot_path(f"{name}-{n}")), full_page=True)
        context.close()


def test_default_transport_resumes_after_a_reload_and_in_a_second_tab(
    api: Api, web_build: Path, chat: Any
) -> None:
    ui = chat(api, "chat-default-resume")
    ui.open("?transport=default")
    ui.ask("Tell me about resumable streams", max_tokens=250)
    ui.wait_for_text()
    session_id = ui.session_id()
    assert client.info(api.url, session_id)["status"] == "running"

    # A second tab of the same chat follows the answer being generated.
    second = ChatPage(ui.context, api.url)
    second.page.goto(ui.url)
    second.wait_for_text()
    assert second.session_id() == session_id
    expect(second.page.get_by_test_id("status")).to_have_text("streaming")

    ui.page.reload()
    assert parse_qs(urlparse(ui.url).query)["transport"] == ["default"]
    ui.expect_finish("stop")
    second.expect_finish("stop")
    server = client.text(api.url, session_id)
    assert server["status"] == "completed" and server["chunks"] == 250
    assert ui.answer() == server["text"]  # the replay rebuilt it: nothing twice
    assert second.answer() == server["text"]
    # The question was kept too, and the whole chat survives a reload after the end.
    ui.page.reload()
    expect(ui.page.locator("[data-testid=message][data-role=user]")).to_have_count(1)
    expect(ui.answer_locator()).to_have_attribute("data-message-id", f"msg-{session_id}")
    assert ui.answer() == server["text"]


def test_stop_cancels_the_generation(api: Api, web_build: Path, chat: Any) -> None:
    ui = chat(api, "chat-stop")
    ui.open("?transport=default")
    ui.ask("Stop me", max_tokens=500)
    ui.wait_for_text()
    session_id = ui.session_id()
    ui.page.get_by_test_id("stop").click()

    expect(ui.page.get_by_test_id("status")).to_have_text("ready", timeout=SLOW_TIMEOUT_MS)
    assert client.wait_terminal(api.url, session_id)["status"] == "cancelled"
    server = client.text(api.url, session_id)
    assert server["chunks"] < 500
    assert server["text"].startswith(ui.answer())
    expect(ui.page.get_by_test_id("stop")).to_be_disabled()
    # Nothing is generating any more: a reload finds no answer to resume.
    ui.page.reload()
    expect(ui.page.get_by_test_id("status")).to_have_text("ready")
    assert server["text"].startswith(ui.answer())


def test_resumable_transport_survives_the_api_killed_mid_answer(
    make_stack: Any, logs_dir: Path, web_build: Path, chat: Any
) -> None:
    stack = make_stack()
    stack.worker()
    port = free_port()  # the restarted API comes back on the same address
    first = Api(stack.env, logs_dir, name=f"{stack.name}-api-a", port=port).start()
    stack.apis.append(first)
    ui = chat(first, "chat-resumable-api-killed")
    ui.open("?transport=resumable")
    ui.ask("Survive a crash", max_tokens=300)
    ui.wait_for_text()
    session_id = ui.session_id()

    first.kill()
    second = Api(stack.env, logs_dir, name=f"{stack.name}-api-b", port=port).start()
    stack.apis.append(second)

    ui.expect_finish("stop")
    server = client.text(second.url, session_id)
    assert server["status"] == "completed" and server["chunks"] == 300
    assert ui.answer() == server["text"]  # resumed from the cursor: no gap, nothing twice
    expect(ui.page.get_by_test_id("error")).to_have_count(0)


def test_reasoning_and_tool_calls_render_from_their_parts(
    api: Api, web_build: Path, chat: Any
) -> None:
    ui = chat(api, "chat-parts")
    ui.open()  # ResumableChatTransport by default
    ui.ask("Why is the sky blue?", max_tokens=40, model="demo-reasoning")
    ui.expect_finish("stop")
    reasoning_session = ui.session_id()
    message = requests.get(f"{api.url}/api/streams/{reasoning_session}/message", timeout=10).json()
    answer = ui.answer_locator()
    details = answer.get_by_test_id("reasoning")
    expect(details).to_have_count(1)
    expect(details.get_by_test_id("reasoning-text")).not_to_be_visible()  # collapsed
    details.locator("summary").click()
    expect(details.get_by_test_id("reasoning-text")).to_have_text(message["message"]["reasoning"])
    assert ui.answer() == message["message"]["content"]

    ui.ask("What is the weather in Paris?", max_tokens=40, model="demo-tools")
    ui.expect_finish("tool-calls")
    tools_session = ui.session_id()
    assert tools_session != reasoning_session
    message = requests.get(f"{api.url}/api/streams/{tools_session}/message", timeout=10).json()
    [call] = message["message"]["tool_calls"]
    part = ui.answer_locator().get_by_test_id("tool-call")
    expect(part).to_have_count(1)
    expect(part).to_have_attribute("data-tool-name", call["function"]["name"])
    expect(part).to_have_attribute("data-state", "input-available")
    shown = json.loads(part.get_by_test_id("tool-input").text_content() or "")
    assert shown == json.loads(call["function"]["arguments"])
