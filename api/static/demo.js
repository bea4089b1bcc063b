// The demo page: start a generation, watch it stream, stop it, share it, reopen it.
// Built on rstreams.js alone. The session shown is in the URL (`?session=<id>`, and in keyed
// mode its stream token in the fragment, `#token=`, which browsers send to no server), so a
// reload or a shared link follows the same session: a replay from the start, then live.

import { RecentSessions, ResumableStreams } from "./rstreams.js";

const KEY_STORAGE = "rstreams:apiKey";
const LIVE = new Set(["connecting", "queued", "running", "reconnecting"]);

const $ = (id) => /** @type {any} */ (document.getElementById(id));
const recent = new RecentSessions();
/** @type {import("./rstreams.d.ts").Stream | null} */
let stream = null;
let unsubscribe = [];

function apiKey() {
  const typed = $("api-key").value.trim();
  if (typed) return typed;
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

function client() {
  return new ResumableStreams({ apiKey: apiKey() || undefined });
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

/** What the page says about a refused request. */
function describe(error) {
  if (error.httpStatus === 401 || error.code === "unauthorized") {
    $("key-box").open = true;
    $("api-key").focus();
    return apiKey()
      ? `The API refused this key: ${error.message}`
      : "This API needs an API key: enter one below and send again.";
  }
  if (error.httpStatus === 429) {
    const wait = error.retryAfterS ? `try again in ${error.retryAfterS} s` : "try again shortly";
    return `Too many requests, ${wait}. (${error.message})`;
  }
  if (error.code === "not_found") {
    return "No such session: it may have expired, or it belongs to another key.";
  }
  if (error.code === "network") return `The API did not answer: ${error.message}`;
  return error.message || error.code;
}

function sessionUrl(sessionId, token) {
  const url = new URL(location.pathname, location.origin);
  url.searchParams.set("session", sessionId);
  if (token) url.hash = `token=${encodeURIComponent(token)}`;
  return url.href;
}

function render(state) {
  const status = state.status;
  $("status").textContent = status;
  $("status").dataset.status = status;
  $("chunks").textContent = String(state.chunks);
  $("stop").disabled = !LIVE.has(status);
  $("answer").setAttribute("aria-busy", String(LIVE.has(status)));
  const via = { ws: "via WebSocket", sse: "via SSE" };
  $("transport").textContent = (LIVE.has(status) && via[state.transport]) || "";
  $("reconnect-note").hidden = !state.reconnecting;
  if (state.reconnecting) {
    $("reconnect-note").textContent = `Connection lost: reconnecting (attempt ${state.attempt})…`;
  }
}

function appendText(text, id = "answer") {
  const box = $(id);
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
  box.append(text);
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function appendReasoning(text) {
  $("reasoning-box").hidden = false;
  appendText(text, "reasoning");
}

/** The answer's tool calls, each as `name(arguments)`. */
function renderToolCalls(calls) {
  const list = $("tool-calls");
  list.hidden = calls.length === 0;
  // An answer that only calls tools has no text: no "answer appears here" box for it.
  $("answer").classList.toggle("calls-only", calls.length > 0);
  list.replaceChildren(
    ...calls.map((call) => {
      const item = document.createElement("li");
      const name = document.createElement("code");
      name.className = "tool-name";
      name.textContent = call.name;
      const args = document.createElement("code");
      args.textContent = call.arguments;
      item.append(name, "(", args, ")");
      return item;
    }),
  );
}

function clearAnswer() {
  $("answer").textContent = "";
  $("reasoning").textContent = "";
  $("reasoning-box").hidden = true;
  renderToolCalls([]);
}

/** A tool for `demo-tools` to call, so the page shows a call without writing any. */
const DEMO_TOOLS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "The weather in a city",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  },
];

/** Follow a session: from the start, replaying what was generated, then live. */
function follow(sessionId, token, { title, push } = {}) {
  if (stream) stream.close();
  unsubscribe.forEach((off) => off());
  showError("");
  clearAnswer();
  const url = sessionUrl(sessionId, token);
  if (push) history.pushState(null, "", url);
  else if (location.href !== url) history.replaceState(null, "", url);
  $("share-link").href = url;
  $("share").hidden = false;
  $("copied").textContent = "";

  const known = recent.list().find((s) => s.sessionId === sessionId);
  recent.add({
    sessionId,
    title: title || known?.title || `Session ${sessionId.slice(0, 8)}`,
    createdAt: known?.createdAt || new Date().toISOString(),
    ...(token ? { token } : {}),
  });

  stream = client().resume(sessionId, token ? { token } : {});
  const current = stream;
  render(current.state);
  unsubscribe = [
    current.on("chunk", (e) => appendText(e.text)),
    current.on("reasoning", (e) => appendReasoning(e.text)),
    current.on("toolCall", () => renderToolCalls(current.state.toolCalls)),
    current.on("state", render),
    current.on("status", ({ status }) => {
      if (status !== "reconnecting" && status !== "connecting") {
        recent.update(sessionId, { status });
        renderRecent();
      }
    }),
    current.on("error", (error) => showError(describe(error))),
  ];
  renderRecent();
}

function renderRecent() {
  const list = $("recent");
  const sessions = recent.list();
  list.replaceChildren(
    ...sessions.map((s) => {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = sessionUrl(s.sessionId, s.token);
      link.textContent = s.title;
      link.title = s.title;
      link.dataset.testid = "recent-item";
      link.dataset.session = s.sessionId;
      if (stream && stream.sessionId === s.sessionId) link.setAttribute("aria-current", "true");
      link.addEventListener("click", (event) => {
        event.preventDefault();
        follow(s.sessionId, s.token, { push: true });
        $("answer").focus?.();
      });
      const meta = document.createElement("span");
      meta.className = "meta";
      const when = new Date(s.createdAt);
      const time = Number.isNaN(when.getTime())
        ? ""
        : when.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
      meta.textContent = [s.status, time].filter(Boolean).join(" · ");
      item.append(link, meta);
      return item;
    }),
  );
  $("recent-empty").hidden = sessions.length > 0;
  $("clear-recent").hidden = sessions.length === 0;
}

function modelChoice() {
  const choice = $("model").value;
  return choice === "__other" ? $("model-other").value.trim() : choice;
}

async function send(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  showError("");
  $("send").disabled = true;
  try {
    const maxTokens = Number($("max-tokens").value) || undefined;
    const model = modelChoice() || undefined;
    const started = await client().start(prompt, {
      model,
      max_tokens: maxTokens,
      tools: model === "demo-tools" ? DEMO_TOOLS : undefined,
    });
    // `start` already follows it; the page follows through `follow` to keep one path.
    started.close();
    follow(started.sessionId, started.token, { title: prompt.slice(0, 80), push: true });
  } catch (error) {
    showError(describe(error));
  } finally {
    $("send").disabled = false;
  }
}

async function stop() {
  if (!stream) return;
  $("stop").disabled = true;
  try {
    await stream.stop();
  } catch (error) {
    showError(describe(error));
    $("stop").disabled = false;
  }
}

function openFromUrl() {
  const params = new URLSearchParams(location.search);
  const sessionId = params.get("session");
  const token = new URLSearchParams(location.hash.slice(1)).get("token") || undefined;
  if (sessionId) {
    follow(sessionId, token);
    return;
  }
  // Back to the page without a session: show none.
  if (stream) stream.close();
  stream = null;
  unsubscribe.forEach((off) => off());
  unsubscribe = [];
  clearAnswer();
  $("share").hidden = true;
  render({ status: "idle", chunks: 0, reconnecting: false, attempt: 0, transport: null });
  renderRecent();
}

function init() {
  $("ask").addEventListener("submit", send);
  $("stop").addEventListener("click", stop);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.metaKey || event.ctrlKey)) send(event);
  });
  $("model").addEventListener("change", () => {
    $("model-other-field").hidden = $("model").value !== "__other";
    if (!$("model-other-field").hidden) $("model-other").focus();
  });
  $("api-key").value = apiKey();
  $("api-key").addEventListener("input", () => {
    try {
      const key = $("api-key").value.trim();
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch {
      showError("This browser keeps no session storage: the key is lost on reload.");
    }
  });
  $("copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("share-link").href);
      $("copied").textContent = "Copied.";
    } catch {
      $("copied").textContent = "Copy the link above by hand.";
    }
  });
  $("clear-recent").addEventListener("click", () => {
    recent.clear();
    renderRecent();
  });
  window.addEventListener("popstate", openFromUrl);
  renderRecent();
  openFromUrl();
}

init();
