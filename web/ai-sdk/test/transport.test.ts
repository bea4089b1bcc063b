// What the transport does with the chat routes' HTTP answers before it follows a session.
// The fetch is the seam the AI SDK's transports offer; following a session against the
// real API is tested in Chromium (tests/test_ai_sdk_browser.py).
import { describe, expect, it } from "vitest";
import { ResumableChatTransport } from "../src/index.js";

function recording(response: () => Response) {
  const calls: { url: string; init: RequestInit }[] = [];
  const fetch = async (url: RequestInfo | URL, init?: RequestInit) => {
    calls.push({ url: String(url), init: init ?? {} });
    return response();
  };
  return { calls, fetch: fetch as typeof globalThis.fetch };
}

const send = {
  chatId: "chat-1",
  messages: [{ id: "u1", role: "user" as const, parts: [{ type: "text" as const, text: "Hi" }] }],
  trigger: "submit-message" as const,
  messageId: undefined,
  abortSignal: undefined,
};

describe("ResumableChatTransport", () => {
  it("posts what DefaultChatTransport posts, with its headers, body and credentials", async () => {
    const { calls, fetch } = recording(
      () => new Response(JSON.stringify({ error: { code: "unknown_model", message: "no such model" } }), { status: 400 }),
    );
    const transport = new ResumableChatTransport({
      api: "https://api.example.com/api/chat",
      headers: () => ({ Authorization: "Bearer k" }),
      body: { model: "demo", max_tokens: 5 },
      credentials: "include",
      fetch,
    });
    await expect(transport.sendMessages({ ...send, body: { temperature: 0 } })).rejects.toThrow("no such model");
    expect(calls).toHaveLength(1);
    const { url, init } = calls[0];
    expect(url).toBe("https://api.example.com/api/chat");
    expect(init.method).toBe("POST");
    expect(init.credentials).toBe("include");
    expect(init.headers).toMatchObject({ "content-type": "application/json", Authorization: "Bearer k" });
    expect(JSON.parse(String(init.body))).toEqual({
      model: "demo",
      max_tokens: 5,
      temperature: 0,
      id: "chat-1",
      messages: send.messages,
      trigger: "submit-message",
    });
  });

  it("reconnects to <api>/<chatId>/stream, and a 204 means nothing to resume", async () => {
    const { calls, fetch } = recording(() => new Response(null, { status: 204 }));
    const transport = new ResumableChatTransport({ fetch });
    expect(await transport.reconnectToStream({ chatId: "a b" })).toBeNull();
    expect(calls[0].url).toBe("/api/chat/a%20b/stream");
    expect(calls[0].init.method).toBe("GET");
    expect(transport.resumeStreamIsReplay).toBe(true);
  });

  it("refuses an answer that names no session", async () => {
    const { fetch } = recording(() => new Response("data: [DONE]\n\n", { status: 200 }));
    const transport = new ResumableChatTransport({ fetch });
    await expect(transport.reconnectToStream({ chatId: "c" })).rejects.toThrow(/X-Session-Id/);
  });
});
