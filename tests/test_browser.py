"""The demo page at `/`, driven in headless Chromium against the real stack."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests
from playwright.sync_api import expect

from api.apikeys import hash_key
from rstreams.localredis import free_port
from tests import client
from tests.browser import screenshot_path
from tests.procs import Api

LIVE = re.compile(r"^(connecting|queued|running)$")


def open_demo(browser: Any, url: str, **context_options: Any) -> Any:
    """A page of the demo in a context of its own (its own localStorage)."""
    page = browser.new_context(**context_options).new_page()
    page.goto(url)
    return page


def ask(page: Any, prompt: str, max_tokens: int = 60, model: str = "demo") -> str:
    """Type a prompt, send it, and return the new session's id (from the page's URL)."""
    before = page.url
    page.get_by_test_id("prompt").fill(prompt)
    page.get_by_test_id("model").select_option(model)
    page.get_by_test_id("max-tokens").fill(str(max_tokens))
    page.get_by_test_id("send").click()
    page.wait_for_url(lambda url: "session=" in url and url != before, timeout=10_000)
    return session_of(page.url)


def session_of(url: str) -> str:
    return parse_qs(urlparse(url).query)["session"][0]


def wait_chunks(page: Any, at_least: int, timeout_ms: int = 15_000) -> None:
    page.wait_for_function(
        "(n) => Number(document.querySelector('[data-testid=chunks]').textContent) >= n",
        arg=at_least,
        timeout=timeout_ms,
    )


def expect_completed_with_text(page: Any, base_url: str, session_id: str) -> str:
    """The page ends `completed` and shows exactly the server's text."""
    expect(page.get_by_test_id("status")).to_have_text("completed", timeout=30_000)
    server = client.text(base_url, session_id)
    expect(page.get_by_test_id("answer")).to_have_text(server["text"])
    expect(page.get_by_test_id("chunks")).to_have_text(str(server["chunks"]))
    expect(page.get_by_test_id("stop")).to_be_disabled()
    return str(server["text"])


def test_a_prompt_streams_into_the_page_until_completed(browser: Any, api: Api) -> None:
    page = open_demo(browser, api.url)
    try:
        expect(page.get_by_test_id("status")).to_have_text("idle")
        session_id = ask(page, "Explain quantum computing", max_tokens=150)
        expect(page.get_by_test_id("status")).to_have_text("running", timeout=10_000)
        expect(page.get_by_test_id("stop")).to_be_enabled()
        expect(page.get_by_test_id("transport")).to_have_text("via WebSocket")
        wait_chunks(page, 1)
        assert page.get_by_test_id("answer").text_content()
        text = expect_completed_with_text(page, api.url, session_id)
        assert text
        page.screenshot(path=screenshot_path("demo-completed"), full_page=True)
    finally:
        page.context.close()


def test_reloading_mid_answer_continues_it_to_the_end(browser: Any, api: Api) -> None:
    page = open_demo(browser, api.url)
    try:
        session_id = ask(page, "Reload me halfway", max_tokens=150)
        wait_chunks(page, 20)
        expect(page.get_by_test_id("status")).to_have_text(LIVE)
        page.reload()
        assert session_of(page.url) == session_id
        expect_completed_with_text(page, api.url, session_id)
        page.screenshot(path=screenshot_path("demo-reloaded"), full_page=True)
    finally:
        page.context.close()


def test_reasoning_shows_in_a_thinking_block_and_survives_a_reload(browser: Any, api: Api) -> None:
    page = open_demo(browser, api.url)
    try:
        session_id = ask(page, "Think about rivers first", max_tokens=200, model="demo-reasoning")
        wait_chunks(page, 10)  # within the reasoning: the first 50 events
        page.reload()
        assert session_of(page.url) == session_id
        expect_completed_with_text(page, api.url, session_id)
        answer = requests.get(f"{api.url}/api/streams/{session_id}/message", timeout=10).json()
        reasoning = page.get_by_test_id("reasoning")
        expect(reasoning).to_have_text(answer["message"]["reasoning"])
        page.locator("#reasoning-box summary").click()  # open the collapsed block
        expect(reasoning).to_be_visible()
        expect(page.get_by_test_id("tool-calls")).to_be_hidden()
        page.screenshot(path=screenshot_path("demo-reasoning"), full_page=True)
    finally:
        page.context.close()


def test_a_tool_call_shows_with_its_arguments(browser: Any, api: Api) -> None:
    page = open_demo(browser, api.url)
    try:
        session_id = ask(page, "Weather in Oslo tomorrow?", model="demo-tools")
        expect(page.get_by_test_id("status")).to_have_text("completed", timeout=30_000)
        answer = requests.get(f"{api.url}/api/streams/{session_id}/message", timeout=10).json()
        (call,) = answer["message"]["tool_calls"]
        assert call["function"]["arguments"] == '{"city": "Weather in Oslo tomorrow?"}'
        expect(page.get_by_test_id("tool-calls")).to_have_text(
            f"get_weather({call['function']['arguments']})"
        )
        expect(page.get_by_test_id("reasoning")).to_be_hidden()
        expect(page.get_by_test_id("answer")).to_be_hidden()  # no text, no empty text box
        page.screenshot(path=screenshot_path("demo-tool-call"), full_page=True)
    finally:
        page.context.close()


def test_the_api_killed_mid_answer_shows_reconnecting_then_completes(
    browser: Any, make_stack: Any, logs_dir: Path
) -> None:
    stack = make_stack(DEMO_TOKENS_PER_S="25")
    stack.worker()
    port = free_port()
    first = Api(stack.env, logs_dir, name="browser-killed", port=port).start()
    stack.apis.append(first)
    page = open_demo(browser, first.url)
    try:
        session_id = ask(page, "Survive a crash of the API", max_tokens=100)
        wait_chunks(page, 10)
        first.kill()
        expect(page.get_by_test_id("status")).to_have_text("reconnecting", timeout=10_000)
        page.screenshot(path=screenshot_path("demo-reconnecting"), full_page=True)
        second = Api(stack.env, logs_dir, name="browser-restarted", port=port).start()
        stack.apis.append(second)
        expect_completed_with_text(page, second.url, session_id)
        page.screenshot(path=screenshot_path("demo-after-restart"), full_page=True)
    finally:
        page.context.close()


def test_the_share_link_opens_the_same_session_in_another_browser(browser: Any, api: Api) -> None:
    page = open_demo(browser, api.url)
    other = None
    try:
        session_id = ask(page, "Share me")
        link = page.get_by_test_id("share-link")
        expect(link).to_have_attribute("href", re.compile(session_id))
        other = open_demo(browser, str(link.get_attribute("href")))
        text = expect_completed_with_text(other, api.url, session_id)
        expect_completed_with_text(page, api.url, session_id)
        assert page.get_by_test_id("answer").text_content() == text
        other.screenshot(path=screenshot_path("demo-shared"), full_page=True)
    finally:
        page.context.close()
        if other is not None:
            other.context.close()


def test_stop_ends_the_answer_cancelled(browser: Any, api: Api) -> None:
    page = open_demo(browser, api.url)
    try:
        session_id = ask(page, "Stop me", max_tokens=500)
        wait_chunks(page, 5)
        page.get_by_test_id("stop").click()
        expect(page.get_by_test_id("status")).to_have_text("cancelled", timeout=10_000)
        expect(page.get_by_test_id("stop")).to_be_disabled()
        server = client.text(api.url, session_id)
        assert server["status"] == "cancelled" and server["chunks"] < 500
        expect(page.get_by_test_id("answer")).to_have_text(server["text"])
        page.screenshot(path=screenshot_path("demo-cancelled"), full_page=True)
    finally:
        page.context.close()


def test_the_page_fits_a_phone_screen_in_dark_mode(browser: Any, api: Api) -> None:
    page = open_demo(
        browser,
        api.url,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        color_scheme="dark",
    )
    try:
        session_id = ask(page, "Explain quantum computing on a phone")
        expect_completed_with_text(page, api.url, session_id)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways: {width} px wide"
        for test_id in ("prompt", "send", "stop", "status", "chunks", "share-link"):
            box = page.get_by_test_id(test_id).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, test_id
        page.screenshot(path=screenshot_path("demo-phone-dark"), full_page=True)
    finally:
        page.context.close()


def test_the_recent_list_reopens_a_session(browser: Any, api: Api) -> None:
    page = open_demo(browser, api.url)
    try:
        first = ask(page, "The first question")
        expect_completed_with_text(page, api.url, first)
        second = ask(page, "The second question")
        expect_completed_with_text(page, api.url, second)
        page.goto(api.url)
        items = page.get_by_test_id("recent-item")
        expect(items).to_have_text(["The second question", "The first question"])
        items.nth(1).click()
        assert session_of(page.url) == first
        expect_completed_with_text(page, api.url, first)
        page.reload()  # the list lives in localStorage and the session in the URL
        expect(page.get_by_test_id("recent-item")).to_have_count(2)
        expect_completed_with_text(page, api.url, first)
        page.screenshot(path=screenshot_path("demo-recent"), full_page=True)
        page.go_back()  # to the page without a session
        expect(page.get_by_test_id("status")).to_have_text("idle")
        expect(page.get_by_test_id("answer")).to_have_text("")
        expect(page.get_by_test_id("share-link")).to_be_hidden()
    finally:
        page.context.close()


def test_a_refused_request_is_explained_on_the_page(browser: Any, api: Api) -> None:
    page = open_demo(browser, api.url)
    try:
        page.get_by_test_id("prompt").fill("Which model?")
        page.get_by_test_id("model").select_option("__other")
        page.get_by_test_id("model-other").fill("no-such-model")
        page.get_by_test_id("send").click()
        error = page.get_by_test_id("error")
        expect(error).to_be_visible(timeout=10_000)
        expect(error).to_contain_text("no-such-model")
        expect(page.get_by_test_id("status")).to_have_text("idle")
        page.screenshot(path=screenshot_path("demo-refused"), full_page=True)
    finally:
        page.context.close()


KEY = "rsk_demo-page-test-key-0123456789abcdefghijk"
SECRET = "demo-page-test-stream-token-secret-0123456789"


def test_keyed_mode_asks_for_a_key_shares_a_stream_token_and_tells_a_rate_limit(
    browser: Any, make_stack: Any
) -> None:
    stack = make_stack(
        API_KEYS=f"web:{hash_key(KEY)}", STREAM_TOKEN_SECRET=SECRET, RATE_CREATES_PER_MIN="1"
    )
    stack.worker()
    keyed = stack.api()
    page = open_demo(browser, keyed.url)
    other = None
    try:
        page.get_by_test_id("prompt").fill("Keyed question")
        page.get_by_test_id("max-tokens").fill("40")
        page.get_by_test_id("send").click()
        expect(page.get_by_test_id("error")).to_contain_text("API key", timeout=10_000)
        expect(page.get_by_test_id("api-key")).to_be_focused()
        page.get_by_test_id("api-key").fill(KEY)
        page.get_by_test_id("send").click()
        expect(page).to_have_url(re.compile(r"#token="), timeout=10_000)
        session_id = session_of(page.url)
        expect(page.get_by_test_id("status")).to_have_text("completed", timeout=30_000)
        text = requests.get(
            f"{keyed.url}/api/streams/{session_id}/text",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        ).json()["text"]
        expect(page.get_by_test_id("answer")).to_have_text(text)
        # Another browser without the key follows with the link's stream token alone.
        link = str(page.get_by_test_id("share-link").get_attribute("href"))
        assert "#token=" in link and "?session=" in link
        other = open_demo(browser, link)
        expect(other.get_by_test_id("status")).to_have_text("completed", timeout=30_000)
        expect(other.get_by_test_id("answer")).to_have_text(text)
        other.screenshot(path=screenshot_path("demo-keyed-shared"), full_page=True)
        # One creation a minute: the next is refused, and the page says when to try again.
        page.get_by_test_id("send").click()
        error = page.get_by_test_id("error")
        expect(error).to_contain_text(re.compile(r"Too many requests, try again in \d+ s"))
        assert session_of(page.url) == session_id
        page.screenshot(path=screenshot_path("demo-rate-limited"), full_page=True)
    finally:
        page.context.close()
        if other is not None:
            other.context.close()


def test_a_link_to_an_unknown_session_says_so_once(browser: Any, api: Api) -> None:
    page = browser.new_context().new_page()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    try:
        page.goto(f"{api.url}/?session={'A' * 21}")
        expect(page.get_by_test_id("status")).to_have_text("failed", timeout=10_000)
        expect(page.get_by_test_id("error")).to_contain_text("No such session")
        page.wait_for_timeout(700)  # longer than a first backoff: no retry comes
        expect(page.get_by_test_id("status")).to_have_text("failed")
        assert len(sockets) == 1
        page.screenshot(path=screenshot_path("demo-not-found"), full_page=True)
    finally:
        page.context.close()
