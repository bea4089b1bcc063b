import { readUIMessageStream, uiMessageChunkSchema } from "ai";
import type { UIMessage, UIMessageChunk } from "ai";
import { describe, expect, it } from "vitest";
import { UIMessageChunkMapper, toUIMessageChunks } from "../src/index.js";
import type { SessionEvent } from "../src/index.js";

const M = "msg-S";

/** Each chunk is one the pinned `ai` package accepts. */
async function expectValid(chunks: UIMessageChunk[]): Promise<void> {
  const schema = uiMessageChunkSchema();
  for (const chunk of chunks) {
    const result = await schema.validate!(chunk);
    expect(result.success, JSON.stringify(chunk)).toBe(true);
  }
}

/** The message the `ai` package assembles from the chunks. */
async function assemble(chunks: UIMessageChunk[]): Promise<UIMessage> {
  const stream = new ReadableStream<UIMessageChunk>({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
  let last: UIMessage | undefined;
  for await (const message of readUIMessageStream({ stream })) last = message;
  return last!;
}

const text = (index: number, t: string): SessionEvent => ({ type: "chunk", index, text: t });
const reasoning = (index: number, t: string): SessionEvent => ({ type: "reasoning", index, text: t });

describe("toUIMessageChunks", () => {
  it("maps a text answer to one text block between start and finish", async () => {
    const events: SessionEvent[] = [
      { type: "status", status: "queued" },
      { type: "status", status: "running" },
      text(0, "Hel"),
      text(1, "lo"),
      { type: "done", finishReason: "stop" },
    ];
    const chunks = toUIMessageChunks(events, M);
    expect(chunks).toEqual([
      { type: "start", messageId: M },
      { type: "start-step" },
      { type: "text-start", id: "t0" },
      { type: "text-delta", id: "t0", delta: "Hel" },
      { type: "text-delta", id: "t0", delta: "lo" },
      { type: "text-end", id: "t0" },
      { type: "finish-step" },
      { type: "finish", finishReason: "stop" },
    ]);
    await expectValid(chunks);
    const message = await assemble(chunks);
    expect(message.id).toBe(M);
    expect(message.parts.filter((p) => p.type === "text")).toMatchObject([{ text: "Hello", state: "done" }]);
  });

  it("names each block after the index of its first event, reasoning then text", async () => {
    const events: SessionEvent[] = [
      reasoning(0, "First, "),
      reasoning(1, "think."),
      { type: "status", status: "resumed" },
      text(2, "Answer"),
      reasoning(3, "Again"),
      text(4, "!"),
      { type: "done", finishReason: "length" },
    ];
    const chunks = toUIMessageChunks(events, M);
    expect(chunks.slice(2, -2)).toEqual([
      { type: "reasoning-start", id: "r0" },
      { type: "reasoning-delta", id: "r0", delta: "First, " },
      { type: "reasoning-delta", id: "r0", delta: "think." },
      { type: "reasoning-end", id: "r0" },
      { type: "text-start", id: "t2" },
      { type: "text-delta", id: "t2", delta: "Answer" },
      { type: "text-end", id: "t2" },
      { type: "reasoning-start", id: "r3" },
      { type: "reasoning-delta", id: "r3", delta: "Again" },
      { type: "reasoning-end", id: "r3" },
      { type: "text-start", id: "t4" },
      { type: "text-delta", id: "t4", delta: "!" },
      { type: "text-end", id: "t4" },
    ]);
    expect(chunks.at(-1)).toEqual({ type: "finish", finishReason: "length" });
    await expectValid(chunks);
    const message = await assemble(chunks);
    expect(message.parts.filter((p) => p.type === "reasoning").map((p) => p.text)).toEqual(["First, think.", "Again"]);
  });

  it("streams tool inputs and makes them available, parsed, in call order at the end", async () => {
    const events: SessionEvent[] = [
      text(0, "Let me look."),
      { type: "tool_call", index: 1, call: { index: 1, id: "call_b", name: "get_time", arguments: "" } },
      { type: "tool_call", index: 2, call: { index: 0, id: "call_a", name: "get_weather", arguments: '{"ci' } },
      { type: "tool_call", index: 3, call: { index: 0, arguments: 'ty":"Paris"}' } },
      { type: "tool_call", index: 4, call: { index: 2, id: "call_c", name: "raw", arguments: "not json" } },
      { type: "done", finishReason: "tool_calls" },
    ];
    const chunks = toUIMessageChunks(events, M);
    expect(chunks.slice(2)).toEqual([
      { type: "text-start", id: "t0" },
      { type: "text-delta", id: "t0", delta: "Let me look." },
      { type: "text-end", id: "t0" },
      { type: "tool-input-start", toolCallId: "call_b", toolName: "get_time" },
      { type: "tool-input-start", toolCallId: "call_a", toolName: "get_weather" },
      { type: "tool-input-delta", toolCallId: "call_a", inputTextDelta: '{"ci' },
      { type: "tool-input-delta", toolCallId: "call_a", inputTextDelta: 'ty":"Paris"}' },
      { type: "tool-input-start", toolCallId: "call_c", toolName: "raw" },
      { type: "tool-input-delta", toolCallId: "call_c", inputTextDelta: "not json" },
      { type: "tool-input-available", toolCallId: "call_a", toolName: "get_weather", input: { city: "Paris" } },
      { type: "tool-input-available", toolCallId: "call_b", toolName: "get_time", input: {} },
      { type: "tool-input-available", toolCallId: "call_c", toolName: "raw", input: "not json" },
      { type: "finish-step" },
      { type: "finish", finishReason: "tool-calls" },
    ]);
    await expectValid(chunks);
    const message = await assemble(chunks);
    const tools = message.parts.filter((p) => p.type.startsWith("tool-"));
    expect(tools).toMatchObject([
      { type: "tool-get_time", toolCallId: "call_b", state: "input-available", input: {} },
      { type: "tool-get_weather", toolCallId: "call_a", state: "input-available", input: { city: "Paris" } },
      { type: "tool-raw", toolCallId: "call_c", state: "input-available", input: "not json" },
    ]);
  });

  it("maps finish reasons to the AI SDK's names", () => {
    const finish = (reason: string | null) =>
      toUIMessageChunks([{ type: "done", finishReason: reason }], M).at(-1);
    expect(finish("content_filter")).toEqual({ type: "finish", finishReason: "content-filter" });
    expect(finish("something_new")).toEqual({ type: "finish", finishReason: "other" });
    expect(finish(null)).toEqual({ type: "finish", finishReason: "other" });
  });

  it("closes the open block before a readable error, never an empty one", async () => {
    const failed = toUIMessageChunks(
      [text(0, "Par"), { type: "error", error: { code: "provider_error", message: "upstream said no" } }],
      M,
    );
    expect(failed.slice(-2)).toEqual([
      { type: "text-end", id: "t0" },
      { type: "error", errorText: "upstream said no" },
    ]);
    await expectValid(failed);
    const bare = toUIMessageChunks([{ type: "error", error: { code: "worker_lost", message: "" } }], M);
    expect(bare.at(-1)).toEqual({ type: "error", errorText: "The generation failed (worker_lost)." });
    expect(toUIMessageChunks([{ type: "error" }], M).at(-1)).toEqual({
      type: "error",
      errorText: "The generation failed.",
    });
  });

  it("ends a cancelled session with abort after closing its block", async () => {
    const chunks = toUIMessageChunks([reasoning(0, "hm"), { type: "cancelled" }], M);
    expect(chunks.slice(-2)).toEqual([{ type: "reasoning-end", id: "r0" }, { type: "abort", reason: "cancelled" }]);
    await expectValid(chunks);
  });

  it("gives nothing after the end, and the same chunks one event at a time", () => {
    const events: SessionEvent[] = [
      reasoning(0, "a"),
      text(1, "b"),
      { type: "tool_call", index: 2, call: { index: 0, id: "c", name: "n", arguments: "{}" } },
      { type: "done", finishReason: "tool_calls" },
      text(3, "late"),
      { type: "cancelled" },
    ];
    const whole = toUIMessageChunks(events, M);
    const mapper = new UIMessageChunkMapper(M);
    const pieces = events.flatMap((event) => mapper.push(event));
    expect(pieces).toEqual(whole);
    expect(mapper.isEnded).toBe(true);
    expect(whole.filter((c) => c.type === "text-delta")).toEqual([{ type: "text-delta", id: "t1", delta: "b" }]);
    // Deterministic: the same events give the same chunks again.
    expect(toUIMessageChunks(events, M)).toEqual(whole);
  });
});
