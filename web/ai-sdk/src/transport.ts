// ResumableChatTransport: the AI SDK's ChatTransport on top of the browser client.
//
// The chat request goes to POST /api/chat as DefaultChatTransport sends it; the answer is
// not read from that response but followed as a session with api/static/rstreams.js,
// which reconnects by itself from its last cursor (WebSocket, or SSE), so a dropped
// network or an API restart mid-answer neither loses nor repeats a word. The session's
// events become UI message chunks through ./mapping.ts, the same mapping the API uses.
import type { ChatRequestOptions, ChatTransport, UIMessage, UIMessageChunk } from "ai";
import { ResumableStreams } from "../../../api/static/rstreams.js";
import type { Stream } from "../../../api/static/rstreams.js";
import { UIMessageChunkMapper, defaultMessageId } from "./mapping.js";
import type { SessionEvent } from "./mapping.js";

type Resolvable<T> = T | (() => T) | (() => Promise<T>);
type FetchFunction = typeof globalThis.fetch;

export interface ResumableChatTransportOptions {
  /** The chat endpoint (default `/api/chat`); the reconnect goes to `<api>/<chatId>/stream`. */
  api?: string;
  /** The API's origin for following sessions, e.g. "https://api.example.com". Default: the
   * part of `api` before `/api/chat` ("" when `api` is a path: this page's origin). */
  baseUrl?: string;
  /** The fetch credentials mode of the chat requests (default: the browser's `same-origin`). */
  credentials?: Resolvable<RequestCredentials>;
  /** Headers of the chat requests. An `Authorization: Bearer <key>` here is also what the
   * session is followed with (then over SSE: a browser cannot put it on a WebSocket). */
  headers?: Resolvable<Record<string, string> | Headers>;
  /** Extra body fields of every chat request (`model`, `max_tokens`, `tools`, ...). */
  body?: Resolvable<object>;
  /** A fetch to use for the chat requests instead of the global one. */
  fetch?: FetchFunction;
  /** How the session is followed: `auto` (default: WebSocket, falling back to SSE), `ws`, `sse`. */
  transport?: "auto" | "ws" | "sse";
  /** Reconnect backoff of the follower (defaults 250 ms, 10 s, 2). */
  backoff?: { initialMs?: number; maxMs?: number; factor?: number };
}

type SendOptions<UI_MESSAGE extends UIMessage> = Parameters<ChatTransport<UI_MESSAGE>["sendMessages"]>[0];
type ReconnectOptions<UI_MESSAGE extends UIMessage> = Parameters<
  ChatTransport<UI_MESSAGE>["reconnectToStream"]
>[0];

async function resolve<T>(value: Resolvable<T> | undefined): Promise<T | undefined> {
  return typeof value === "function" ? await (value as () => T | Promise<T>)() : value;
}

function plainHeaders(headers: Record<string, string> | Headers | undefined): Record<string, string> {
  if (!headers) return {};
  if (headers instanceof Headers) return Object.fromEntries(headers.entries());
  return { ...headers };
}

/** The key of an `Authorization: Bearer <key>` header, whatever its case. */
function bearerOf(headers: Record<string, string>): string {
  for (const [name, value] of Object.entries(headers)) {
    if (name.toLowerCase() === "authorization") {
      const match = /^Bearer\s+(.+)$/i.exec(value.trim());
      if (match) return match[1];
    }
  }
  return "";
}

/** An Error with the API's message (`{"error": {"code", "message"}}`) and status. */
async function chatError(response: Response): Promise<Error> {
  let message = `${response.status} ${response.statusText}`.trim();
  let code = `http_${response.status}`;
  try {
    const body = await response.json();
    if (body?.error?.message) {
      message = String(body.error.message);
      code = String(body.error.code ?? code);
    }
  } catch {
    // not JSON: keep the status line
  }
  return Object.assign(new Error(message), { code, statusCode: response.status });
}

function abortError(): Error {
  return new DOMException("The chat request was aborted.", "AbortError");
}

/**
 * An AI SDK `ChatTransport` whose answers survive the network and the API: pass it to
 * `useChat({ transport, resume: true })`. Aborting (the chat's `stop()`) stops following
 * the answer, not its generation: stop the generation with
 * `DELETE /api/chat/<chatId>/stream` (see the README).
 */
export class ResumableChatTransport<UI_MESSAGE extends UIMessage = UIMessage>
  implements ChatTransport<UI_MESSAGE>
{
  /** A reconnect follows the answer from its first chunk: the chat rebuilds the message. */
  readonly resumeStreamIsReplay = true;
  private readonly options: ResumableChatTransportOptions;
  private readonly api: string;

  constructor(options: ResumableChatTransportOptions = {}) {
    this.options = options;
    this.api = options.api ?? `${(options.baseUrl ?? "").replace(/\/+$/, "")}/api/chat`;
  }

  /** POST the chat request to `api`, then follow the session it started. */
  async sendMessages(options: SendOptions<UI_MESSAGE>): Promise<ReadableStream<UIMessageChunk>> {
    const { abortSignal, chatId, messages, trigger, messageId } = options;
    const headers = await this.headers(options);
    const body = { ...(await resolve(this.options.body)), ...options.body, id: chatId, messages, trigger, messageId };
    const response = await this.fetch(this.api, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
      credentials: await resolve(this.options.credentials),
      signal: abortSignal,
    });
    return this.follow(response, headers, abortSignal);
  }

  /** GET `<api>/<chatId>/stream`: null when the chat has no active answer, else follow it. */
  async reconnectToStream(options: ReconnectOptions<UI_MESSAGE>): Promise<ReadableStream<UIMessageChunk> | null> {
    const headers = await this.headers(options);
    const response = await this.fetch(`${this.api}/${encodeURIComponent(options.chatId)}/stream`, {
      method: "GET",
      headers,
      credentials: await resolve(this.options.credentials),
      signal: options.abortSignal,
    });
    if (response.status === 204) return null;
    return this.follow(response, headers, options.abortSignal);
  }

  private fetch(url: string, init: RequestInit): Promise<Response> {
    return (this.options.fetch ?? globalThis.fetch)(url, init);
  }

  private async headers(options: ChatRequestOptions): Promise<Record<string, string>> {
    return { ...plainHeaders(await resolve(this.options.headers)), ...plainHeaders(options.headers) };
  }

  /** The session of a chat response (its `X-Session-Id`), followed as UI message chunks. */
  private async follow(
    response: Response,
    headers: Record<string, string>,
    abortSignal: AbortSignal | undefined,
  ): Promise<ReadableStream<UIMessageChunk>> {
    if (!response.ok) throw await chatError(response);
    const sessionId = response.headers.get("X-Session-Id");
    // The chunks come from the session, not from this response: let it go.
    await response.body?.cancel().catch(() => {});
    if (!sessionId) {
      throw new Error(`${this.api} answered without an X-Session-Id header: is it this project's API?`);
    }
    const messageId = response.headers.get("X-Message-Id") || defaultMessageId(sessionId);
    if (abortSignal?.aborted) throw abortError();
    const client = new ResumableStreams({
      baseUrl: this.options.baseUrl ?? this.api.replace(/\/api\/chat\/?$/, ""),
      apiKey: bearerOf(headers),
      transport: this.options.transport,
      backoff: this.options.backoff,
    });
    return chunksOf(client.resume(sessionId), messageId, abortSignal);
  }
}

/** A followed session as a stream of UI message chunks; the abort signal stops following. */
function chunksOf(
  stream: Stream,
  messageId: string,
  abortSignal: AbortSignal | undefined,
): ReadableStream<UIMessageChunk> {
  const mapper = new UIMessageChunkMapper(messageId);
  const unsubscribe: (() => void)[] = [];
  const stop = () => {
    for (const off of unsubscribe) off();
    abortSignal?.removeEventListener("abort", onAbort);
    stream.close();
  };
  let onAbort = () => {};
  return new ReadableStream<UIMessageChunk>({
    start(controller) {
      const emit = (event: SessionEvent) => {
        for (const chunk of mapper.push(event)) controller.enqueue(chunk);
        if (mapper.isEnded) {
          stop();
          controller.close();
        }
      };
      onAbort = () => {
        stop();
        controller.error(abortError());
      };
      abortSignal?.addEventListener("abort", onAbort);
      for (const chunk of mapper.start()) controller.enqueue(chunk);
      unsubscribe.push(
        // rstreams.js hands each content event over once, in order, across reconnects.
        stream.on("chunk", (e) => emit({ type: "chunk", index: e.index, text: e.text })),
        stream.on("reasoning", (e) => emit({ type: "reasoning", index: e.index, text: e.text })),
        stream.on("toolCall", (e) => emit({ type: "tool_call", index: e.index, call: e.call })),
        stream.on("done", (e) => emit({ type: "done", finishReason: e.finishReason })),
        stream.on("cancelled", () => emit({ type: "cancelled" })),
        stream.on("error", (e) => emit({ type: "error", error: e })),
      );
    },
    cancel() {
      stop();
    },
  });
}
