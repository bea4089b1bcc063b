// Types of rstreams.js: the browser client of resumable LLM streams.
//
//   import { ResumableStreams } from "/static/rstreams.js";
//   const client = new ResumableStreams({ baseUrl: "" });          // same origin
//   const stream = await client.start("Explain quantum computing", { model: "demo" });
//   stream.on("chunk", (e) => output.append(e.text));
//   stream.on("state", (s) => render(s));                          // every change
//   const final = await stream.finished;                           // terminal state
//   // later, on another page or device:
//   const again = client.resume(stream.sessionId);                 // replays, then follows
//
// A stream reconnects by itself (exponential backoff with jitter, from its last cursor)
// until the session ends; nothing is lost or repeated across reconnects.

/** What the page shows: the server's status, or `reconnecting` while the link is down. */
export type StreamStatus =
  | "connecting"
  | "queued"
  | "running"
  | "reconnecting"
  | "completed"
  | "failed"
  | "cancelled";

export type Transport = "auto" | "ws" | "sse";

export interface Usage {
  prompt_tokens?: number;
  completion_tokens?: number;
  total_tokens?: number;
  [key: string]: unknown;
}

export interface StreamError {
  /** The server's error code (`not_found`, `unauthorized`, `provider_error`, ...), or
   * `network` for a request that never got an answer. */
  code: string;
  message: string;
  /** The HTTP status, when the error came from an HTTP answer. */
  httpStatus?: number;
  /** Seconds to wait before trying again, from the `Retry-After` of a 429 or 503. */
  retryAfterS?: number;
}

/** A tool call of the answer, as far as it has come: `arguments` is JSON once the call is
 * complete (the session finished with `tool_calls`). */
export interface ToolCall {
  id: string;
  name: string;
  arguments: string;
}

/** A snapshot of a stream; a new object on every change (safe as React state). */
export interface StreamState {
  sessionId: string;
  status: StreamStatus;
  /** The answer's text so far. */
  text: string;
  /** The model's reasoning so far ("" for a model that does not stream any). */
  reasoning: string;
  /** The answer's tool calls so far, in order. */
  toolCalls: ToolCall[];
  /** Content events received: text chunks, reasoning and tool-call pieces together (the
   * index of the last one + 1). */
  chunks: number;
  /** The id of the last event received: resume after it. */
  cursor: string | null;
  /** True while the link is down and a reconnect is scheduled or under way. */
  reconnecting: boolean;
  /** Reconnect attempts since the last event arrived (0 when connected). */
  attempt: number;
  /** `ws` or `sse` once connected. */
  transport: "ws" | "sse" | null;
  finishReason: string | null;
  usage: Usage | null;
  /** The terminal error (status `failed`), or why the stream could not be followed. */
  error: StreamError | null;
  /** True once the session reached `completed`, `failed` or `cancelled`. */
  ended: boolean;
}

export interface StreamEventMap {
  chunk: { text: string; index: number; id: string };
  reasoning: { text: string; index: number; id: string };
  /** A piece of tool call `call.index`; `call.id` and `call.name` come on its first piece. */
  toolCall: {
    index: number;
    id: string;
    call: { index: number; id?: string; name?: string; arguments: string };
  };
  /** The status changed (including to and from `reconnecting`). */
  status: { status: StreamStatus };
  /** The session completed. */
  done: { finishReason: string | null; chunks: number; usage: Usage | null };
  cancelled: Record<string, never>;
  /** The session failed, or cannot be followed (not found, unauthorized). Terminal. */
  error: StreamError;
  /** The link dropped; the next attempt starts after `delayMs`. */
  reconnecting: { attempt: number; delayMs: number };
  /** Connected (or reconnected) over `transport`. */
  open: { transport: "ws" | "sse" };
  /** Any change: the new snapshot. */
  state: StreamState;
}

export interface BackoffOptions {
  /** First delay, ms (default 250). */
  initialMs?: number;
  /** Longest delay, ms (default 10000). */
  maxMs?: number;
  /** Growth per attempt (default 2). Each delay is jittered to 50-100 % of its value. */
  factor?: number;
}

export interface ClientOptions {
  /** The API's origin, e.g. "https://api.example.com"; "" (default) is this page's origin. */
  baseUrl?: string;
  /** An API key, sent as `Authorization: Bearer` on HTTP requests. Never put a secret key
   * in a public page: a backend should create sessions and hand the page a stream token.
   * A stream whose token has expired follows on with this key (over SSE). */
  apiKey?: string;
  /** `auto` (default): WebSocket, falling back to SSE when WebSockets fail to connect. */
  transport?: Transport;
  backoff?: BackoffOptions;
  /** An SSE response with neither an event nor a ping for this long, ms, is taken as dead
   * and followed again (default 45000: three of the server's pings at the default
   * `SSE_PING_S` of 15). Keep it above the server's `SSE_PING_S`. */
  sseIdleMs?: number;
}

export interface StartOptions {
  model?: string;
  max_tokens?: number;
  temperature?: number;
  /** Chat messages instead of a single prompt (with tool calls, tool results and image
   * parts: DESIGN 2.5). */
  messages?: { role: string; content: unknown; tool_calls?: unknown[]; tool_call_id?: string }[];
  tools?: unknown[];
  tool_choice?: unknown;
  response_format?: unknown;
  top_p?: number;
  stop?: string | string[];
  seed?: number;
  reasoning?: { effort: "low" | "medium" | "high" } | { max_tokens: number };
  /** Sent as the `Idempotency-Key` header: a retried start returns the same session. */
  idempotencyKey?: string;
}

export interface ResumeOptions {
  /** Follow from after this event id (default: from the start, replaying everything). */
  after?: string | null;
  /** A stream token (keyed mode) for this session. */
  token?: string;
}

export interface SessionInfo {
  sessionId: string;
  status: "queued" | "running" | "completed" | "failed" | "cancelled";
  model: string;
  chunks: number;
  createdAt: string | null;
  [key: string]: unknown;
}

export class Stream {
  readonly sessionId: string;
  /** The stream token this stream follows with (keyed mode: from `start`'s 202 or
   * `resume`'s options), or null. A page keeps it to follow the session again. */
  readonly token: string | null;
  /** The current snapshot. */
  readonly state: StreamState;
  /** Resolves with the terminal snapshot (completed, failed or cancelled); also resolves
   * (never rejects) if `close()` is called first, with `ended: false`. */
  readonly finished: Promise<StreamState>;
  /** Subscribe; returns the unsubscribe function. */
  on<K extends keyof StreamEventMap>(type: K, listener: (event: StreamEventMap[K]) => void): () => void;
  /** Stop following (generation goes on on the server); no more events or reconnects. */
  close(): void;
  /** Cancel the generation on the server; the stream then ends `cancelled`. */
  stop(): Promise<void>;
}

export class ResumableStreams {
  constructor(options?: ClientOptions);
  /** Create a session (`POST /api/streams/generate`) and follow it. Rejects with a
   * `StreamError` (as an `Error` with `code`, `httpStatus`) when the API refuses. */
  start(prompt: string, options?: StartOptions): Promise<Stream>;
  /** Follow an existing session by id, replaying from `after`. */
  resume(sessionId: string, options?: ResumeOptions): Stream;
  /** `GET /api/streams/generate?sessionId=`. */
  status(sessionId: string): Promise<SessionInfo>;
  /** `GET /api/streams/<id>/text`. */
  text(sessionId: string): Promise<{ sessionId: string; status: string; text: string; chunks: number }>;
  /** `DELETE /api/streams/<id>`. */
  stop(sessionId: string): Promise<{ sessionId: string; status: string }>;
}

/** The error thrown by `start`, `status`, `text` and `stop`. */
export class ResumableStreamsError extends Error implements StreamError {
  constructor(code: string, message: string, httpStatus?: number, retryAfterS?: number);
  code: string;
  httpStatus?: number;
  retryAfterS?: number;
}

/** A session this browser started or opened, as kept in localStorage. */
export interface RecentSession {
  sessionId: string;
  /** A short label, e.g. the start of the prompt. */
  title: string;
  /** ISO time it was added. */
  createdAt: string;
  /** The last status seen. */
  status?: StreamStatus;
  /** A stream token (keyed mode), so the session can be followed again. */
  token?: string;
}

/** This browser's recent sessions in localStorage, newest first, shared by every page of
 * the origin that uses the same `storageKey` (the demo page and the React components). */
export class RecentSessions {
  /** Defaults: storageKey "rstreams:recent", limit 20, storage `globalThis.localStorage`
   * (a page without storage keeps the list in memory). */
  constructor(options?: { storageKey?: string; limit?: number; storage?: Storage });
  list(): RecentSession[];
  /** Add, or move to the front and update an existing entry with the same id. */
  add(session: RecentSession): void;
  update(sessionId: string, patch: Partial<RecentSession>): void;
  remove(sessionId: string): void;
  clear(): void;
}
