"""The React package (web/react): its unit tests, and its example page in Chromium against
the real stack: start, reload and resume, an API killed mid-answer, stop; StrictMode on."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from playwright.sync_api import Page, expect

from api import examples
from api.apikeys import hash_key
from api.app import create_app
from rstreams.localredis import free_port
from shared.settings import ApiSettings, Settings
from tests import client
from tests.browser import screenshot_path
from tests.node import WEB, assert_vitest_passes, build_web, npm
from tests.procs import ROOT, Api

SLOW_TIMEOUT_MS = 60_000


@pytest.fixture(scope="session")
def web_build() -> Path:
    """web/ installed from its lockfile (when node_modules is missing or older) and built:
    the package's dist/ and the example's dist/, which the API serves."""
    build_web()
    dist = WEB / "example" / "dist"
    assert (dist / "index.html").is_file()
    return dist


def test_the_hook_and_its_components_pass_their_unit_tests(web_build: Path) -> None:
    assert_vitest_passes(WEB / "react")


def test_the_package_is_self_contained_esm_with_types(web_build: Path) -> None:
    dist = WEB / "react" / "dist"
    bundle = (dist / "index.js").read_text()
    # The client is inside; React is not: the application brings its own.
    assert re.search(r"ResumableStreams = class", bundle) and "RecentSessions = class" in bundle
    imported = set(re.findall(r"""^import .* from ["']([^"']+)["'];?$""", bundle, re.M))
    assert imported == {"react", "react/jsx-runtime"}
    for declarations in dist.glob("*.d.ts"):
        assert "api/static" not in declarations.read_text(), declarations.name
    assert (dist / "rstreams.d.ts").read_text() == (
        ROOT / "api" / "static" / "rstreams.d.ts"
    ).read_text()
    # What `npm publish` would ship: the build and the README, with React as a peer.
    packed = json.loads(npm("pack", "--dry-run", "--json", cwd=WEB / "react"))[0]
    assert packed["name"] == "@resumable-streams/react"
    shipped = {f["path"] for f in packed["files"]}
    assert {"dist/index.js", "dist/index.d.ts", "dist/rstreams.d.ts", "README.md"} <= shipped
    assert not [path for path in shipped if path.startswith(("src/", "test/"))]
    manifest = json.loads((WEB / "react" / "package.json").read_text())
    assert set(manifest["peerDependencies"]) == {"react", "react-dom"}
    assert "dependencies" not in manifest
    assert manifest["exports"]["."] == {"types": "./dist/index.d.ts", "import": "./dist/index.js"}


# --- the API serves the example ------------------------------------------------------


def test_the_example_route_says_how_to_build_it_when_it_is_not_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(examples, "REACT_DIST", tmp_path / "missing")
    http = create_app(Settings()).test_client()
    for path in ("/examples/react/", "/examples/react/assets/index.js"):
        response = http.get(path)
        assert response.status_code == 404
        assert response.json is not None
        assert response.json["error"]["code"] == "not_found"
        assert (
            "npm --prefix web ci && npm --prefix web run build" in response.json["error"]["message"]
        )


def test_the_example_is_public_in_keyed_mode_and_only_its_own_files(web_build: Path) -> None:
    keyed = Settings(api=ApiSettings(api_keys=(("app", "0" * 64),), stream_token_secret="s" * 32))
    http = create_app(keyed).test_client()
    with http.get("/examples/react/") as page:
        assert page.status_code == 200
        assert page.mimetype == "text/html"
        html = page.get_data(as_text=True)
    script = re.search(r'src="/examples/react/(assets/[^"]+\.js)"', html)
    assert script, html
    with http.get(f"/examples/react/{script.group(1)}") as asset:
        assert asset.status_code == 200
        assert "javascript" in asset.mimetype
    for escape in ("../../pyproject.toml", "..%2F..%2Fpyproject.toml", "nope.js"):
        with http.get(f"/examples/react/{escape}") as response:
            assert response.status_code == 404, escape
            assert response.json is not None and response.json["error"]["code"] == "not_found"
    with http.get("/api/streams") as listing:
        assert listing.status_code == 401  # the rest still needs a key


# --- the example page in Chromium ------------------------------------------------------


class ExamplePage:
    """The example page in a fresh browser context, counting its WebSocket connections."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.context = browser.new_context()
        self.page: Page = self.context.new_page()
        self.base_url = base_url
        self.sockets: list[str] = []
        self.socket_objects: list[Any] = []
        self.page.on("websocket", self._opened)

    def _opened(self, ws: Any) -> None:
        self.sockets.append(ws.url)
        self.socket_objects.append(ws)

    def expect_no_retry(self) -> None:
        """Every socket has closed, and none opened in the client's first retry delay after."""
        deadline = time.monotonic() + 20  # bounds a hang only
        while not all(ws.is_closed() for ws in self.socket_objects):
            assert time.monotonic() < deadline, "a WebSocket stays open"
            self.page.wait_for_timeout(50)
        # A retry would open within the first backoff (at most 250 ms): wait out 4 of them.
        count = len(self.sockets)
        self.page.wait_for_timeout(1000)
        assert len(self.sockets) == count, self.sockets

    def open(self, query: str = "") -> None:
        self.page.goto(f"{self.base_url}/examples/react/{query}")

    def ask(self, prompt: str, max_tokens: int) -> str:
        """Send a prompt; the new session's id, once it is in the URL."""
        shown = parse_qs(urlparse(self.page.url).query).get("session", [])
        self.page.get_by_test_id("prompt").fill(prompt)
        self.page.get_by_test_id("max-tokens").fill(str(max_tokens))
        self.page.get_by_test_id("send").click()
        expect(self.page).to_have_url(re.compile(r"[?&]session="))
        if shown:
            expect(self.page).not_to_have_url(re.compile(f"session={re.escape(shown[0])}"))
        return parse_qs(urlparse(self.page.url).query)["session"][0]

    def wait_for_chunks(self, at_least: int) -> None:
        self.page.wait_for_function(
            "n => Number(document.querySelector('[data-testid=chunks]').textContent) >= n",
            arg=at_least,
            timeout=SLOW_TIMEOUT_MS,
        )

    def expect_status(self, status: str, timeout_ms: int = SLOW_TIMEOUT_MS) -> None:
        expect(self.page.get_by_test_id("status")).to_have_text(status, timeout=timeout_ms)

    def answer(self) -> str:
        return self.page.get_by_test_id("answer").text_content() or ""

    def sockets_of(self, session_id: str) -> list[str]:
        return [url for url in self.sockets if f"/api/streams/{session_id}/ws" in url]

    def close(self, name: str) -> None:
        self.page.screenshot(path=str(screenshot_path(name)), full_page=True)
        self.context.close()


@pytest.fixture
def example(browser: Any) -> Iterator[Any]:
    """`example(api)`: an ExamplePage on that API, closed (with a screenshot) after the test."""
    opened: list[tuple[ExamplePage, str]] = []

    def make(api: Api, name: str) -> ExamplePage:
        page = ExamplePage(browser, api.url)
        opened.append((page, name))
        return page

    yield make
    for page, name in opened:
        page.close(name)


def test_start_streams_to_completion_on_one_websocket(
    api: Api, web_build: Path, example: Any
) -> None:
    ui = example(api, "react-start")
    ui.open()
    expect(ui.page.get_by_test_id("status")).to_have_text("idle")
    session_id = ui.ask("Explain quantum computing", max_tokens=40)

    ui.expect_status("completed")
    server = client.text(api.url, session_id)
    assert server["status"] == "completed" and server["chunks"] == 40
    assert ui.answer() == server["text"]  # every chunk once, in order
    expect(ui.page.get_by_test_id("chunks")).to_have_text("40")
    # StrictMode mounts twice; the page still opened one connection for the stream.
    assert len(ui.sockets_of(session_id)) == 1, ui.sockets
    recent = ui.page.get_by_test_id("recent")
    entry = recent.locator(f'li[data-session-id="{session_id}"]')
    expect(entry.get_by_label("Status: completed")).to_be_visible()
    expect(entry.get_by_role("button", name=re.compile("^Resume"))).to_be_disabled()


def test_reload_mid_answer_resumes_to_the_same_text(
    api: Api, web_build: Path, example: Any
) -> None:
    ui = example(api, "react-reload")
    ui.open()
    session_id = ui.ask("Tell me about resumable streams", max_tokens=250)
    ui.wait_for_chunks(10)
    assert client.info(api.url, session_id)["status"] == "running"

    ui.page.reload()
    assert parse_qs(urlparse(ui.page.url).query)["session"] == [session_id]
    ui.expect_status("completed")
    server = client.text(api.url, session_id)
    assert server["chunks"] == 250
    assert ui.answer() == server["text"]
    expect(ui.page.get_by_test_id("chunks")).to_have_text("250")
    # One connection per page load: before the reload and after it.
    assert len(ui.sockets_of(session_id)) == 2, ui.sockets


def test_api_killed_mid_answer_the_page_reconnects_and_completes(
    make_stack: Any, logs_dir: Path, web_build: Path, example: Any
) -> None:
    stack = make_stack()
    stack.worker()
    port = free_port()  # the restarted API comes back on the same address
    first = Api(stack.env, logs_dir, name=f"{stack.name}-api-a", port=port).start()
    stack.apis.append(first)
    ui = example(first, "react-api-killed")
    ui.open()
    session_id = ui.ask("Survive a crash", max_tokens=300)
    ui.wait_for_chunks(10)

    first.kill()
    ui.expect_status("reconnecting", timeout_ms=15_000)
    expect(ui.page.get_by_test_id("reconnecting")).to_be_visible()
    second = Api(stack.env, logs_dir, name=f"{stack.name}-api-b", port=port).start()
    stack.apis.append(second)

    ui.expect_status("completed")
    server = client.text(second.url, session_id)
    assert server["chunks"] == 300
    assert ui.answer() == server["text"]
    expect(ui.page.get_by_test_id("reconnecting")).to_have_count(0)


def test_stop_cancels_the_answer(api: Api, web_build: Path, example: Any) -> None:
    ui = example(api, "react-stop")
    ui.open()
    session_id = ui.ask("Stop me", max_tokens=500)
    ui.wait_for_chunks(5)
    ui.page.get_by_test_id("stop").click()

    ui.expect_status("cancelled")
    assert client.info(api.url, session_id)["status"] == "cancelled"
    server = client.text(api.url, session_id)
    assert server["chunks"] < 500
    assert ui.answer() == server["text"]
    expect(ui.page.get_by_test_id("stop")).to_be_disabled()


def test_resume_from_the_recent_list_shows_that_session(
    api: Api, web_build: Path, example: Any
) -> None:
    ui = example(api, "react-recent")
    ui.open()
    first = ui.ask("The first question", max_tokens=20)
    ui.expect_status("completed")
    second = ui.ask("The second question", max_tokens=20)
    ui.expect_status("completed")
    assert first != second

    entry = ui.page.get_by_test_id("recent").locator(f'li[data-session-id="{first}"]')
    resume = entry.get_by_role("button", name="Resume “The first question”")
    resume.focus()
    ui.page.keyboard.press("Enter")
    expect(ui.page).to_have_url(re.compile(f"session={re.escape(first)}"))
    ui.expect_status("completed")
    assert ui.answer() == client.text(api.url, first)["text"]
    share = entry.get_by_role("link", name=re.compile("^Share link"))
    assert parse_qs(urlparse(share.get_attribute("href") or "").query)["session"] == [first]


def test_keyed_mode_a_shared_link_with_a_stream_token_follows_the_answer(
    make_stack: Any, web_build: Path, example: Any
) -> None:
    key = "sk-react-example-key"
    stack = make_stack(API_KEYS=f"web:{hash_key(key)}", STREAM_TOKEN_SECRET="s" * 48)
    stack.worker()
    api = stack.api()
    auth = {"Authorization": f"Bearer {key}"}
    created = client.create(api.url, headers=auth, prompt="Shared in keyed mode", max_tokens=60)
    session_id, token = created["sessionId"], created["streamToken"]

    # A browser without the key opens the link the example shares: the session in the
    # query, its stream token in the fragment.
    ui = example(api, "react-keyed-share")
    ui.open(f"?session={session_id}#token={token}")
    ui.expect_status("completed")
    server = requests.get(f"{api.url}/api/streams/{session_id}/text", headers=auth, timeout=10)
    assert server.status_code == 200
    assert ui.answer() == server.json()["text"]
    assert len(ui.sockets_of(session_id)) == 1, ui.sockets
    share = ui.page.get_by_test_id("share-link").get_attribute("href") or ""
    assert urlparse(share).fragment == f"token={token}"


def test_a_link_to_an_unknown_session_says_so_once(api: Api, web_build: Path, example: Any) -> None:
    unknown = "U" * 21
    ui = example(api, "react-unknown")
    ui.open(f"?session={unknown}")
    ui.expect_status("failed")
    expect(ui.page.get_by_test_id("error")).to_contain_text("not_found")
    expect(ui.page.get_by_test_id("stop")).to_be_disabled()
    ui.expect_no_retry()
    assert len(ui.sockets_of(unknown)) == 1, ui.sockets
