// The hook over the real browser client (api/static/rstreams.js), with fetch answered
// here: the options reach the HTTP calls, and unmounting aborts the follower.
import { act, cleanup, renderHook, waitFor } from "@testing-library/react";
import { afterEach, expect, it, vi } from "vitest";
import { RecentSessions, useResumableStream } from "../src/index.js";

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});

it("sends the token as a bearer key to baseUrl, follows with the stream token until unmounted", async () => {
  const calls: { url: string; init: RequestInit }[] = [];
  let followAborted = false;
  vi.stubGlobal(
    "fetch",
    vi.fn(async (url: string, init: RequestInit) => {
      calls.push({ url, init });
      if (init.method === "POST") {
        return new Response(JSON.stringify({ sessionId: "S".repeat(21), status: "queued", streamToken: "tok-1" }), {
          status: 202,
          headers: { "Content-Type": "application/json" },
        });
      }
      // The follower: an event stream that stays open until aborted.
      return new Promise<Response>((_resolve, reject) => {
        init.signal?.addEventListener("abort", () => {
          followAborted = true;
          reject(new DOMException("aborted", "AbortError"));
        });
      });
    }),
  );
  const recent = new RecentSessions({ storageKey: "test:recent" });
  recent.clear();
  const hook = renderHook(() =>
    useResumableStream({ baseUrl: "https://api.example", token: "sk-key", transport: "sse", recent }),
  );
  let id = "";
  await act(async () => {
    id = await hook.result.current.startStream("Explain quantum computing", { model: "demo", max_tokens: 7 });
  });
  expect(id).toBe("S".repeat(21));
  expect(hook.result.current.streamToken).toBe("tok-1");
  const post = calls[0];
  expect(post.url).toBe("https://api.example/api/streams/generate");
  expect(new Headers(post.init.headers).get("Authorization")).toBe("Bearer sk-key");
  expect(JSON.parse(String(post.init.body))).toEqual({
    prompt: "Explain quantum computing",
    model: "demo",
    max_tokens: 7,
  });
  await waitFor(() => expect(calls).toHaveLength(2));
  expect(calls[1].url).toBe(`https://api.example/api/streams/${id}?token=tok-1`);
  expect(new Headers(calls[1].init.headers).get("Authorization")).toBe("Bearer sk-key");
  // The start's stream token is remembered, so the session can be followed again.
  expect(recent.list()).toEqual([
    expect.objectContaining({ sessionId: id, title: "Explain quantum computing", token: "tok-1" }),
  ]);

  hook.unmount();
  await waitFor(() => expect(followAborted).toBe(true));

  // Another page (no key) resumes by id alone: the remembered token goes with it.
  const other = renderHook(() => useResumableStream({ baseUrl: "https://api.example", transport: "sse", recent }));
  act(() => other.result.current.resumeStream(id));
  await waitFor(() => expect(calls).toHaveLength(3));
  expect(calls[2].url).toBe(`https://api.example/api/streams/${id}?token=tok-1`);
  expect(new Headers(calls[2].init.headers).get("Authorization")).toBeNull();
  other.unmount();
});
