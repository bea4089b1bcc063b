// A session's stored events -> the AI SDK's UI message chunks.
//
// The API's chat routes (api/uimessages.py) and this transport turn the same events into
// the same chunks, in the same order, with the same ids: one pure, deterministic function
// of the event list, so that a replay, a reconnect or another API instance never gives a
// different message. tests/test_ai_sdk_browser.py compares the two on a real session.
import type { UIMessageChunk } from "ai";

/** A content or terminal event of a session, as the API streams it (DESIGN 2.2, 2.5). */
export type SessionEvent =
  | { type: "status"; status?: string; [key: string]: unknown }
  | { type: "chunk"; index: number; text: string }
  | { type: "reasoning"; index: number; text: string }
  | {
      type: "tool_call";
      index: number;
      call: { index: number; id?: string | null; name?: string | null; arguments?: string | null };
    }
  | { type: "done"; finishReason?: string | null }
  | { type: "error"; error?: { code?: string; message?: string } | null }
  | { type: "cancelled" };

type FinishReason = Extract<UIMessageChunk, { type: "finish" }>["finishReason"];

const FINISH_REASONS: Record<string, FinishReason> = {
  stop: "stop",
  length: "length",
  tool_calls: "tool-calls",
  content_filter: "content-filter",
};

/** The assistant message id of a session that was not started with another one. */
export function defaultMessageId(sessionId: string): string {
  return `msg-${sessionId}`;
}

/** The AI SDK's finish reason for a provider's (`tool_calls` -> `tool-calls`, ...). */
export function toFinishReason(reason: string | null | undefined): FinishReason {
  return FINISH_REASONS[reason ?? ""] ?? "other";
}

/** A failed session's message for `errorText`: readable, never empty. */
export function errorText(error: { code?: string; message?: string } | null | undefined): string {
  const message = String(error?.message ?? "").trim();
  if (message) return message;
  const code = String(error?.code ?? "").trim();
  return code ? `The generation failed (${code}).` : "The generation failed.";
}

interface ToolCallSoFar {
  index: number;
  id: string;
  name: string;
  arguments: string;
}

/** The parsed JSON arguments of a tool call: `{}` when empty, the raw text when not JSON. */
function toolInput(text: string): unknown {
  if (!text.trim()) return {};
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/**
 * The mapping one event at a time, for a stream that is still arriving: `push` gives the
 * chunks an event adds. Feeding every event of a session gives `toUIMessageChunks`.
 */
export class UIMessageChunkMapper {
  private readonly messageId: string;
  private started = false;
  private ended = false;
  private open: { kind: "text" | "reasoning"; id: string } | null = null;
  private readonly calls = new Map<number, ToolCallSoFar>();

  constructor(messageId: string) {
    this.messageId = messageId;
  }

  /** True once a terminal event (`done`, `error`, `cancelled`) was mapped. */
  get isEnded(): boolean {
    return this.ended;
  }

  /** The chunks that open the message (`start`, `start-step`); also given by the first `push`. */
  start(): UIMessageChunk[] {
    if (this.started) return [];
    this.started = true;
    return [{ type: "start", messageId: this.messageId }, { type: "start-step" }];
  }

  /** The chunks one event adds (none after the session ended). */
  push(event: SessionEvent): UIMessageChunk[] {
    if (this.ended) return [];
    const out = this.start();
    switch (event.type) {
      case "chunk":
      case "reasoning": {
        const kind = event.type === "chunk" ? "text" : "reasoning";
        if (this.open?.kind !== kind) {
          out.push(...this.closeBlock());
          const id = `${kind === "text" ? "t" : "r"}${event.index}`;
          this.open = { kind, id };
          out.push({ type: `${kind}-start`, id });
        }
        out.push({ type: `${kind}-delta`, id: this.open.id, delta: String(event.text ?? "") });
        return out;
      }
      case "tool_call": {
        out.push(...this.closeBlock());
        const piece = event.call;
        let call = this.calls.get(piece.index);
        if (!call) {
          call = {
            index: piece.index,
            id: piece.id || `call_${piece.index}`,
            name: piece.name || "",
            arguments: "",
          };
          this.calls.set(piece.index, call);
          out.push({ type: "tool-input-start", toolCallId: call.id, toolName: call.name });
        }
        const delta = piece.arguments ?? "";
        if (delta) {
          call.arguments += delta;
          out.push({ type: "tool-input-delta", toolCallId: call.id, inputTextDelta: delta });
        }
        return out;
      }
      case "done": {
        out.push(...this.closeBlock());
        const calls = [...this.calls.values()].sort((a, b) => a.index - b.index);
        for (const call of calls) {
          out.push({
            type: "tool-input-available",
            toolCallId: call.id,
            toolName: call.name,
            input: toolInput(call.arguments),
          });
        }
        out.push({ type: "finish-step" });
        out.push({ type: "finish", finishReason: toFinishReason(event.finishReason) });
        this.ended = true;
        return out;
      }
      case "error":
        out.push(...this.closeBlock());
        out.push({ type: "error", errorText: errorText(event.error) });
        this.ended = true;
        return out;
      case "cancelled":
        out.push(...this.closeBlock());
        out.push({ type: "abort", reason: "cancelled" });
        this.ended = true;
        return out;
      default:
        return out; // `status` (queued, running, resumed) and later event types: no chunk
    }
  }

  private closeBlock(): UIMessageChunk[] {
    const open = this.open;
    this.open = null;
    if (!open) return [];
    return [{ type: `${open.kind}-end`, id: open.id }];
  }
}

/** Every chunk of a session's events, in order (chat-mapping: the one shared mapping). */
export function toUIMessageChunks(events: readonly SessionEvent[], messageId: string): UIMessageChunk[] {
  const mapper = new UIMessageChunkMapper(messageId);
  const out = mapper.start();
  for (const event of events) out.push(...mapper.push(event));
  return out;
}
