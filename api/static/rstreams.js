// rstreams.js: the browser client of resumable LLM streams. An ES module without
// dependencies, served by the API at /static/rstreams.js; its types are rstreams.d.ts.
//
//   import { ResumableStreams } from "/static/rstreams.js";
//   const client = new ResumableStreams();
//   const stream = await client.start("Explain quantum computing", { model: "demo" });
//   stream.on("chunk", (e) => output.append(e.text));
//   const final = await stream.finished;
//
// A stream follows its session over WebSocket (or Server-Sent Events), and reconnects by
// itself from the last event id it saw (exponential backoff with 50-100 % jitter, reset
// when an event arrives) until the session ends or the server refuses it for good.

/** @typedef {import("./rstreams.d.ts").StreamStatus} StreamStatus */
/** @typedef {import("./rstreams.d.ts").StreamState} StreamState */
/** @typedef {import("./rstreams.d.ts").StreamError} StreamError */
/** @typedef {import("./rstreams.d.ts").ClientOptions} ClientOptions */
/** @typedef {import("./rstreams.d.ts").StartOptions} StartOptions */
/** @typedef {import("./rstreams.d.ts").ResumeOptions} ResumeOptions */
/** @typedef {import("./rstreams.d.ts").SessionInfo} SessionInfo */
/** @typedef {import("./rstreams.d.ts").RecentSession} RecentSession */
/**
 * How one SSE response ended: a refusal (`terminal`), or a reason to follow again.
 * `over`: a 204, the session had ended with nothing after the cursor.
 * @typedef {{ terminal: boolean; error?: StreamError; retryAfterS?: number; network?: boolean; over?: boolean }} Outcome
 */

// Refusals that no retry can change: the `error` frame's code, or the WebSocket close code.
const TERMINAL_CODES = new Set(["not_found", "unauthorized", "forbidden_origin", "bad_cursor"]);
const TERMINAL_CLOSES = new Map([
  [4400, "bad_cursor"],
  [4401, "unauthorized"],
  [4403, "forbidden_origin"],
  [4404, "not_found"],
]);
const TERMINAL_HTTP = new Map([
  [400, "bad_cursor"],
  [401, "unauthorized"],
  [403, "forbidden_origin"],
  [404, "not_found"],
]);
// A WebSocket that fails this many times in a row before opening gives way to SSE (`auto`).
const WS_FAILURES_BEFORE_SSE = 2;
// An SSE response that shows no sign of life (events or the server's pings) this long is
// dead: three of the server's pings at the default SSE_PING_S of 15 (option `sseIdleMs`).
const SSE_IDLE_MS = 45000;

/** The error thrown by `start`, `status`, `text` and `stop`. */
export class ResumableStreamsError extends Error {
  /**
   * @param {string} code the server's error code, or `network`
   * @param {string} message
   * @param {number} [httpStatus]
   * @param {number} [retryAfterS] the `Retry-After` of a 429 or 503, in seconds
   */
  constructor(code, message, httpStatus, retryAfterS) {
    super(message);
    this.name = "ResumableStreamsError";
    /** @type {string} */
    this.code = code;
    /** @type {number | undefined} */
    this.httpStatus = httpStatus;
    /** @type {number | undefined} */
    this.retryAfterS = retryAfterS;
  }
}

/** @param {Response} response @returns {Promise<ResumableStreamsError>} */
async function errorOf(response) {
  let code = `http_${response.status}`;
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.code === "string") {
      code = body.error.code;
      message = String(body.error.message || code);
    }
  } catch {
    // not JSON (a proxy's page): keep the status line
  }
  const retry = Number(response.headers.get("Retry-After"));
  return new ResumableStreamsError(code, message, response.status, retry > 0 ? retry : undefined);
}

/** @param {unknown} e @returns {StreamError} */
function plainError(e) {
  if (e instanceof ResumableStreamsError) {
    /** @type {StreamError} */
    const out = { code: e.code, message: e.message };
    if (e.httpStatus !== undefined) out.httpStatus = e.httpStatus;
    if (e.retryAfterS !== undefined) out.retryAfterS = e.retryAfterS;
    return out;
  }
  return { code: "network", message: e instanceof Error ? e.message : String(e) };
}

/** The page's origin, when there is a page. */
function pageOrigin() {
  return typeof location !== "undefined" && location.origin && location.origin !== "null"
    ? location.origin
    : "";
}

/** A stream of one session: its state, its events, and the link that keeps it coming. */
export class Stream {
  /**
   * Made by `ResumableStreams.resume` and `.start`; not meant to be built directly.
   * @param {ResumableStreams} client
   * @param {string} sessionId
   * @param {ResumeOptions} [options]
   */
  constructor(client, sessionId, options = {}) {
    /** @readonly */
    this.sessionId = sessionId;
    /** @private */
    this._client = client;
    /** @private */
    this._token = options.token || null;
    /** @private @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    /** @private @type {StreamState} */
    this._state = Object.freeze({
      sessionId,
      status: /** @type {StreamStatus} */ ("connecting"),
      text: "",
      reasoning: "",
      toolCalls: [],
      chunks: 0,
      cursor: options.after || null,
      reconnecting: false,
      attempt: 0,
      transport: null,
      finishReason: null,
      usage: null,
      error: null,
      ended: false,
    });
    /** @private The last status the server told (what to show once reconnected). */
    this._serverStatus = /** @type {StreamStatus} */ ("connecting");
    /** @private */
    this._closed = false;
    /** @private @type {(() => void) | null} closes the current connection */
    this._hangUp = null;
    /** @private @type {ReturnType<typeof setTimeout> | null} */
    this._timer = null;
    /** @private WebSocket failures before opening, in a row */
    this._wsFailures = 0;
    /** @private */
    this._useSse = client._transport === "sse" || (client._transport === "auto" && !this._canUseWs());
    /** @private @type {(state: StreamState) => void} */
    this._resolve = () => {};
    /** @readonly @type {Promise<StreamState>} */
    this.finished = new Promise((resolve) => {
      this._resolve = resolve;
    });
    /** @private A browser back online retries at once instead of at the end of its backoff. */
    this._onOnline = () => {
      if (this._timer !== null && this._state.reconnecting) {
        clearTimeout(this._timer);
        this._connect();
      }
    };
    if (typeof addEventListener === "function") addEventListener("online", this._onOnline);
    // Listeners added right after `resume` returns see every event: connect a tick later.
    this._timer = setTimeout(() => this._connect(), 0);
  }

  /** The stream token this stream follows with (keyed mode), or null. @returns {string | null} */
  get token() {
    return this._token;
  }

  /** The current snapshot. @returns {StreamState} */
  get state() {
    return this._state;
  }

  /**
   * Subscribe to `chunk`, `reasoning`, `toolCall`, `status`, `done`, `cancelled`, `error`,
   * `reconnecting`, `open` or `state`; returns the unsubscribe function.
   * @param {string} type
   * @param {(event: any) => void} listener
   * @returns {() => void}
   */
  on(type, listener) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
    };
  }

  /** Stop following (generation goes on on the server); no more events or reconnects. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._stopLink();
    this._end();
  }

  /** Cancel the generation on the server; the stream then ends `cancelled`. */
  async stop() {
    await this._client.stop(this.sessionId);
    // The follower sees the `cancelled` event; if it is between connections, it will.
  }

  // --- internals ---------------------------------------------------------------------

  /** @private */
  _canUseWs() {
    if (typeof WebSocket === "undefined") return false;
    // A browser cannot put an API key on a WebSocket: without a stream token only SSE can
    // carry the `Authorization` header.
    return !(this._client._apiKey && !this._token);
  }

  /** @private @param {string} type @param {unknown} event */
  _emit(type, event) {
    const set = this._listeners.get(type);
    if (!set || this._closed) return; // a listener may close the stream mid-event
    for (const listener of [...set]) {
      try {
        listener(event);
      } catch (e) {
        // A listener's bug must not break the stream: report it as the browser would.
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }

  /** @private @param {Partial<StreamState>} patch */
  _set(patch) {
    const before = this._state;
    this._state = Object.freeze({ ...before, ...patch });
    if (patch.status && patch.status !== before.status) {
      this._emit("status", { status: patch.status });
    }
    this._emit("state", this._state);
  }

  /** @private Resolve `finished` (once: a promise settles once) and let go of the page. */
  _end() {
    if (typeof removeEventListener === "function") removeEventListener("online", this._onOnline);
    this._resolve(this._state);
  }

  /** @private */
  _stopLink() {
    if (this._timer !== null) clearTimeout(this._timer);
    this._timer = null;
    const hangUp = this._hangUp;
    this._hangUp = null;
    if (hangUp) hangUp();
  }

  /** @private */
  _query() {
    const params = new URLSearchParams();
    if (this._state.cursor) params.set("after", this._state.cursor);
    if (this._token) params.set("token", this._token);
    const query = params.toString();
    return query ? `?${query}` : "";
  }

  /** @private */
  _connect() {
    this._timer = null;
    if (this._closed || this._state.ended) return;
    if (this._useSse) this._connectSse();
    else this._connectWs();
  }

  /** @private */
  _connectWs() {
    const base = this._client._baseUrl || pageOrigin();
    const url = new URL(`${base}/api/streams/${encodeURIComponent(this.sessionId)}/ws`);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(url.href + this._query());
    } catch (e) {
      this._linkDown();
      return;
    }
    let opened = false;
    let done = false;
    /** @type {StreamError | null} */
    let refusal = null;
    this._hangUp = () => {
      done = true;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    };
    ws.onopen = () => {
      opened = true;
      this._wsFailures = 0;
      this._opened("ws");
    };
    ws.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return; // not a frame of ours
      }
      if (event && event.type === "error" && !event.id && event.error) {
        refusal = { code: String(event.error.code), message: String(event.error.message) };
        if (TERMINAL_CODES.has(refusal.code)) {
          done = true;
          this._hangUp = null;
          this._refused(refusal);
          ws.onclose = null;
          ws.close(1000);
        }
        return; // e.g. too_many_followers: the close code that follows says what to do
      }
      this._handle(event);
      if (this._state.ended) {
        done = true;
        this._hangUp = null;
        ws.onclose = null;
        ws.close(1000);
      }
    };
    ws.onerror = () => {}; // onclose follows with code 1006
    ws.onclose = (close) => {
      if (done) return;
      done = true;
      this._hangUp = null;
      const terminal = TERMINAL_CLOSES.get(close.code);
      if (terminal) {
        this._refused(refusal || { code: terminal, message: close.reason || terminal });
        return;
      }
      if (!opened && this._client._transport === "auto") {
        this._wsFailures += 1;
        if (this._wsFailures >= WS_FAILURES_BEFORE_SSE) this._useSse = true;
      }
      this._linkDown();
    };
  }

  /** @private Server-Sent Events read with fetch, which can send headers and read statuses. */
  _connectSse() {
    const base = this._client._baseUrl || pageOrigin();
    const url = `${base}/api/streams/${encodeURIComponent(this.sessionId)}${this._query()}`;
    const abort = new AbortController();
    let done = false;
    /** @type {ReturnType<typeof setTimeout> | null} */
    let idle = null;
    const stopIdle = () => {
      if (idle !== null) clearTimeout(idle);
      idle = null;
    };
    const watchIdle = () => {
      stopIdle();
      const idleMs = this._client._sseIdleMs;
      idle = setTimeout(() => abort.abort(new Error("no data for too long")), idleMs);
    };
    this._hangUp = () => {
      done = true;
      stopIdle();
      abort.abort();
    };
    const headers = { Accept: "text/event-stream", ...this._client._auth() };
    (async () => {
      watchIdle();
      const response = await fetch(url, { headers, signal: abort.signal, cache: "no-store" });
      if (!response.ok) {
        const error = await errorOf(response);
        const terminal = TERMINAL_HTTP.get(response.status);
        if (terminal) return { terminal: true, error: plainError(error) };
        return { terminal: false, error: plainError(error), retryAfterS: error.retryAfterS };
      }
      if (response.status === 204) return { terminal: false, over: true };
      if (!response.body) throw new Error("this browser cannot stream a response body");
      this._opened("sse");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (ended || done) break;
        watchIdle();
        buffer += value;
        // Events end with a blank line; lines end with \n, \r\n or \r.
        const blocks = buffer.split(/\r\n\r\n|\n\n|\r\r/);
        buffer = blocks.pop() || "";
        for (const block of blocks) {
          const outcome = this._sseBlock(block);
          if (outcome) return outcome;
          if (this._state.ended) return null;
        }
      }
      return null; // the server ended the response: follow again from the cursor
    })()
      .catch((e) => ({ terminal: false, error: plainError(e), network: true }))
      .then((/** @type {Outcome | null} */ outcome) => {
        stopIdle();
        if (done) return;
        done = true;
        this._hangUp = null;
        abort.abort();
        if (this._state.ended) return;
        if (outcome && outcome.over) {
          this._endedBefore();
          return;
        }
        if (outcome && outcome.terminal && outcome.error) {
          this._refused(outcome.error);
          return;
        }
        // SSE cannot reach the server either: the network or the server is down, not
        // WebSockets. Try a WebSocket again next time.
        if (outcome && outcome.network && this._client._transport === "auto" && this._canUseWs()) {
          this._useSse = false;
          this._wsFailures = 0;
        }
        this._linkDown(outcome ? outcome.retryAfterS : undefined);
      });
  }

  /**
   * @private One SSE event block; returns a terminal outcome for a refusal.
   * @param {string} block
   * @returns {Outcome | null}
   */
  _sseBlock(block) {
    let type = "message";
    const data = [];
    for (const line of block.split(/\r\n|\n|\r/)) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    // The same data as the `error` event before it, for EventSource users (docs/API.md).
    if (!data.length || type === "stream_error") return null;
    let event;
    try {
      event = JSON.parse(data.join("\n"));
    } catch {
      return null;
    }
    if (!event || typeof event !== "object") return null;
    if (!event.type) event.type = type;
    if (event.type === "error" && !event.id && event.error) {
      const error = { code: String(event.error.code), message: String(event.error.message) };
      return { terminal: TERMINAL_CODES.has(error.code), error };
    }
    this._handle(event);
    return null;
  }

  /** @private @param {"ws" | "sse"} transport */
  _opened(transport) {
    if (this._closed) return;
    /** @type {Partial<StreamState>} */
    const patch = { transport, reconnecting: false };
    if (this._state.status === "reconnecting" || this._state.status === "connecting") {
      patch.status = this._serverStatus;
    }
    this._set(patch);
    this._emit("open", { transport });
  }

  /**
   * @private The link dropped without a terminal refusal: try again after a backoff.
   * @param {number} [retryAfterS] the server's `Retry-After`, a floor for the delay
   */
  _linkDown(retryAfterS) {
    if (this._closed || this._state.ended) return;
    const { initialMs, maxMs, factor } = this._client._backoff;
    const attempt = this._state.attempt;
    let delayMs = Math.min(maxMs, initialMs * factor ** attempt);
    delayMs = Math.round(delayMs * (0.5 + Math.random() * 0.5));
    if (retryAfterS) delayMs = Math.max(delayMs, Math.min(retryAfterS * 1000, maxMs));
    this._set({ status: "reconnecting", reconnecting: true, attempt: attempt + 1, transport: null });
    this._emit("reconnecting", { attempt: attempt + 1, delayMs });
    this._timer = setTimeout(() => this._connect(), delayMs);
  }

  /** @private The session ended before the cursor (an SSE 204): end as its stream info says. */
  _endedBefore() {
    this._client
      .status(this.sessionId)
      .then((info) => {
        if (info.status === "completed") {
          const { finishReason, chunks, usage } = info;
          this._handle({ type: "done", finishReason, chunks, usage });
        } else if (info.status === "cancelled") this._handle({ type: "cancelled" });
        else this._handle({ type: "error", error: info.error });
      })
      .catch(() => {
        // A stream token opens only the followers: the final status is not ours to read.
        this._handle({
          type: "error",
          error: { code: "ended", message: "the session had ended before this cursor" },
        });
      });
  }

  /** @private The server will not let this stream be followed: terminal. @param {StreamError} error */
  _refused(error) {
    if (this._closed || this._state.ended) return;
    // A stream token lasts STREAM_TOKEN_TTL_S: a client that also holds an API key follows
    // on with the key instead, over SSE, the transport that can carry it.
    const client = this._client;
    if (error.code === "unauthorized" && this._token && client._apiKey && client._transport !== "ws") {
      this._token = null;
      this._useSse = true;
      this._connect();
      return;
    }
    this._set({ status: "failed", error, ended: true, reconnecting: false });
    this._emit("error", error);
    this._end();
  }

  /** @private One event of the session (a WebSocket frame or an SSE event's data). @param {any} event */
  _handle(event) {
    if (this._closed || this._state.ended || !event || typeof event.type !== "string") return;
    /** @type {Partial<StreamState>} */
    const patch = { attempt: 0, reconnecting: false };
    if (typeof event.id === "string") patch.cursor = event.id;
    switch (event.type) {
      case "status": {
        const status = event.status === "queued" ? "queued" : "running";
        this._serverStatus = status;
        patch.status = status;
        this._set(patch);
        return;
      }
      case "chunk":
      case "reasoning":
      case "tool_call": {
        const index = Number(event.index);
        this._serverStatus = "running";
        patch.status = "running";
        if (!(index >= this._state.chunks)) {
          this._set(patch); // a content event already received: never twice
          return;
        }
        patch.chunks = index + 1;
        if (event.type === "tool_call") {
          const call = event.call || {};
          const at = Number(call.index);
          const calls = this._state.toolCalls.slice();
          const known = calls[at] || { id: "", name: "", arguments: "" };
          calls[at] = {
            id: call.id ?? known.id,
            name: call.name ?? known.name,
            arguments: known.arguments + String(call.arguments ?? ""),
          };
          patch.toolCalls = calls;
          this._set(patch);
          this._emit("toolCall", { index, id: event.id, call: { ...call, index: at } });
          return;
        }
        const text = String(event.text ?? "");
        const field = event.type === "chunk" ? "text" : "reasoning";
        patch[field] = this._state[field] + text;
        this._set(patch);
        this._emit(event.type, { text, index, id: event.id });
        return;
      }
      case "done": {
        patch.status = "completed";
        patch.ended = true;
        patch.finishReason = event.finishReason ?? null;
        patch.usage = event.usage ?? null;
        this._set(patch);
        this._emit("done", {
          finishReason: this._state.finishReason,
          chunks: this._state.chunks,
          usage: this._state.usage,
        });
        this._end();
        return;
      }
      case "cancelled": {
        patch.status = "cancelled";
        patch.ended = true;
        this._set(patch);
        this._emit("cancelled", {});
        this._end();
        return;
      }
      case "error": {
        const error = {
          code: String(event.error?.code ?? "error"),
          message: String(event.error?.message ?? "the generation failed"),
        };
        patch.status = "failed";
        patch.ended = true;
        patch.error = error;
        this._set(patch);
        this._emit("error", error);
        this._end();
        return;
      }
      default:
        this._set(patch); // an event type of a later version: keep the cursor
    }
  }
}

/** A client of one API: starts sessions and follows them. */
export class ResumableStreams {
  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    /** @internal read by Stream */
    this._baseUrl = String(options.baseUrl || "").replace(/\/+$/, "");
    /** @internal read by Stream */
    this._apiKey = options.apiKey || "";
    /** @internal read by Stream */
    this._transport = options.transport || "auto";
    if (!["auto", "ws", "sse"].includes(this._transport)) {
      throw new TypeError(`transport must be "auto", "ws" or "sse", not ${this._transport}`);
    }
    /** @internal read by Stream */
    this._sseIdleMs = options.sseIdleMs ?? SSE_IDLE_MS;
    const backoff = options.backoff || {};
    /** @internal read by Stream */
    this._backoff = {
      initialMs: backoff.initialMs ?? 250,
      maxMs: backoff.maxMs ?? 10000,
      factor: backoff.factor ?? 2,
    };
  }

  /**
   * Create a session (`POST /api/streams/generate`) and follow it. Rejects with a
   * `ResumableStreamsError` when the API refuses.
   * @param {string} prompt
   * @param {StartOptions} [options]
   * @returns {Promise<Stream>}
   */
  async start(prompt, options = {}) {
    const { idempotencyKey, messages, ...rest } = options;
    /** @type {Record<string, unknown>} */
    const body = messages ? { messages } : { prompt };
    for (const [key, value] of Object.entries(rest)) {
      if (value !== undefined && value !== null && value !== "") body[key] = value;
    }
    /** @type {Record<string, string>} */
    const headers = { "Content-Type": "application/json" };
    if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
    const created = await this._request("POST", "/api/streams/generate", body, headers);
    return this.resume(created.sessionId, { token: created.streamToken });
  }

  /**
   * Follow an existing session by id, replaying from `after` (default: the start).
   * @param {string} sessionId
   * @param {ResumeOptions} [options]
   * @returns {Stream}
   */
  resume(sessionId, options = {}) {
    return new Stream(this, sessionId, options);
  }

  /**
   * `GET /api/streams/generate?sessionId=`.
   * @param {string} sessionId
   * @returns {Promise<SessionInfo>}
   */
  status(sessionId) {
    return this._request("GET", `/api/streams/generate?sessionId=${encodeURIComponent(sessionId)}`);
  }

  /**
   * `GET /api/streams/<id>/text`: everything generated so far.
   * @param {string} sessionId
   * @returns {Promise<{ sessionId: string; status: string; text: string; chunks: number }>}
   */
  text(sessionId) {
    return this._request("GET", `/api/streams/${encodeURIComponent(sessionId)}/text`);
  }

  /**
   * `DELETE /api/streams/<id>`: cancel the generation.
   * @param {string} sessionId
   * @returns {Promise<{ sessionId: string; status: string }>}
   */
  stop(sessionId) {
    return this._request("DELETE", `/api/streams/${encodeURIComponent(sessionId)}`);
  }

  /** @internal the `Authorization` header, if the client has a key @returns {Record<string, string>} */
  _auth() {
    return this._apiKey ? { Authorization: `Bearer ${this._apiKey}` } : {};
  }

  /**
   * @private
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @param {Record<string, string>} [headers]
   */
  async _request(method, path, body, headers = {}) {
    let response;
    try {
      response = await fetch(this._baseUrl + path, {
        method,
        headers: { Accept: "application/json", ...this._auth(), ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (e) {
      throw new ResumableStreamsError("network", `the API did not answer: ${e}`);
    }
    if (!response.ok) throw await errorOf(response);
    return response.json();
  }
}

/** This browser's recent sessions in localStorage, newest first. */
export class RecentSessions {
  /** @param {{ storageKey?: string; limit?: number; storage?: Storage }} [options] */
  constructor(options = {}) {
    /** @private */
    this._key = options.storageKey || "rstreams:recent";
    /** @private */
    this._limit = options.limit ?? 20;
    /** @private @type {Storage | null} */
    this._storage = options.storage || null;
    if (!this._storage) {
      try {
        this._storage = globalThis.localStorage || null;
      } catch {
        this._storage = null; // storage blocked (a sandboxed frame, privacy settings)
      }
    }
    /** @private @type {RecentSession[]} the list when there is no storage */
    this._memory = [];
  }

  /** @returns {RecentSession[]} */
  list() {
    if (!this._storage) return this._memory.map((s) => ({ ...s }));
    try {
      const parsed = JSON.parse(this._storage.getItem(this._key) || "[]");
      if (!Array.isArray(parsed)) return [];
      return parsed.filter((s) => s && typeof s.sessionId === "string");
    } catch {
      return [];
    }
  }

  /** Add, or move to the front and update an existing entry with the same id. @param {RecentSession} session */
  add(session) {
    const old = this.list().find((s) => s.sessionId === session.sessionId);
    const rest = this.list().filter((s) => s.sessionId !== session.sessionId);
    this._save([{ ...old, ...session }, ...rest]);
  }

  /** @param {string} sessionId @param {Partial<RecentSession>} patch */
  update(sessionId, patch) {
    this._save(this.list().map((s) => (s.sessionId === sessionId ? { ...s, ...patch, sessionId } : s)));
  }

  /** @param {string} sessionId */
  remove(sessionId) {
    this._save(this.list().filter((s) => s.sessionId !== sessionId));
  }

  clear() {
    this._save([]);
  }

  /** @private @param {RecentSession[]} sessions */
  _save(sessions) {
    const kept = sessions.slice(0, this._limit);
    if (!this._storage) {
      this._memory = kept.map((s) => ({ ...s }));
      return;
    }
    try {
      this._storage.setItem(this._key, JSON.stringify(kept));
    } catch {
      this._memory = kept; // storage full or refused: keep it for this page at least
      this._storage = null;
    }
  }
}
