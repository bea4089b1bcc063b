import { StrictMode, useEffect } from "react";
import { act, cleanup, render, renderHook, screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import { useResumableStream } from "../src/index.js";
import type { UseResumableStreamOptions } from "../src/index.js";
import { FakeClient, FakeRecent } from "./fakes.js";

afterEach(cleanup);

function setup(options: Partial<UseResumableStreamOptions> = {}) {
  const client = new FakeClient();
  const recent = new FakeRecent();
  const hook = renderHook(() =>
    useResumableStream({ client, recent: recent.asRecent(), ...options }),
  );
  return { client, recent, hook };
}

describe("useResumableStream", () => {
  it("is idle before anything starts", () => {
    const { hook } = setup();
    expect(hook.result.current).toMatchObject({
      status: "idle",
      content: "",
      reasoning: "",
      toolCalls: [],
      chunks: 0,
      isStreaming: false,
      isReconnecting: false,
      error: null,
      sessionId: null,
    });
  });

  it("returns the same functions on every render, safe as effect dependencies", async () => {
    const { client, hook } = setup();
    const first = hook.result.current;
    act(() => hook.result.current.resumeStream("k".repeat(21)));
    act(() => client.streams[0].chunk("x"));
    hook.rerender();
    const later = hook.result.current;
    expect(later.startStream).toBe(first.startStream);
    expect(later.resumeStream).toBe(first.resumeStream);
    expect(later.stopStream).toBe(first.stopStream);
    expect(later.closeStream).toBe(first.closeStream);
  });

  it("goes from start through streaming to completed", async () => {
    const { client, recent, hook } = setup();
    let id = "";
    await act(async () => {
      id = await hook.result.current.startStream("Explain quantum computing", "demo");
    });
    expect(client.starts).toEqual([{ prompt: "Explain quantum computing", options: { model: "demo" } }]);
    const stream = client.streams[0];
    expect(id).toBe(stream.sessionId);
    expect(hook.result.current).toMatchObject({ status: "connecting", sessionId: id, isStreaming: true });

    act(() => stream.update({ status: "queued" }));
    expect(hook.result.current.status).toBe("queued");
    act(() => stream.chunk("Quantum "));
    act(() => stream.chunk("computing"));
    expect(hook.result.current).toMatchObject({
      status: "running",
      content: "Quantum computing",
      chunks: 2,
      isStreaming: true,
    });

    act(() => stream.update({ status: "completed", ended: true, finishReason: "stop" }));
    expect(hook.result.current).toMatchObject({
      status: "completed",
      content: "Quantum computing",
      isStreaming: false,
    });
    expect(hook.result.current.state?.finishReason).toBe("stop");
    expect(recent.items).toEqual([
      expect.objectContaining({ sessionId: id, title: "Explain quantum computing", status: "completed" }),
    ]);
  });

  it("returns the reasoning and the tool calls beside the content", async () => {
    const { client, hook } = setup();
    await act(async () => {
      await hook.result.current.startStream("Weather?", { model: "demo-tools", tools: [] });
    });
    const stream = client.streams[0];
    act(() => stream.update({ status: "running", reasoning: "Hmm.", chunks: 1 }));
    expect(hook.result.current).toMatchObject({ reasoning: "Hmm.", toolCalls: [], content: "" });
    const call = { id: "call_1", name: "get_weather", arguments: '{"city":"Oslo"}' };
    act(() => stream.update({ toolCalls: [call], chunks: 3 }));
    act(() => stream.update({ status: "completed", finishReason: "tool_calls", ended: true }));
    expect(hook.result.current).toMatchObject({
      status: "completed",
      reasoning: "Hmm.",
      toolCalls: [call],
      chunks: 3,
      isStreaming: false,
    });
    expect(hook.result.current.state?.finishReason).toBe("tool_calls");
  });

  it("passes start options and resume options through to the client", async () => {
    const { client, hook } = setup();
    await act(async () => {
      await hook.result.current.startStream("hi", { model: "demo", max_tokens: 5 });
    });
    expect(client.starts[0].options).toEqual({ model: "demo", max_tokens: 5 });
    act(() => hook.result.current.resumeStream("a".repeat(21), { token: "tok" }));
    expect(client.resumes).toEqual([{ sessionId: "a".repeat(21), options: { token: "tok" } }]);
  });

  it("shows reconnecting while the client reconnects, and the text goes on", async () => {
    const { client, hook } = setup();
    act(() => hook.result.current.resumeStream("b".repeat(21)));
    const stream = client.streams[0];
    act(() => stream.chunk("one "));
    act(() => stream.update({ status: "reconnecting", reconnecting: true, attempt: 1 }));
    expect(hook.result.current).toMatchObject({
      status: "reconnecting",
      isReconnecting: true,
      isStreaming: true,
      content: "one ",
    });
    act(() => stream.update({ status: "running", reconnecting: false, attempt: 0 }));
    act(() => stream.chunk("two"));
    expect(hook.result.current).toMatchObject({
      status: "running",
      isReconnecting: false,
      content: "one two",
    });
    expect(client.streams).toHaveLength(1); // the client reconnects, not the hook
  });

  it("reports a refused start as an error and rejects", async () => {
    const { client, hook } = setup();
    client.refuse = { code: "unknown_model", message: "no such model", httpStatus: 400 };
    let rejected: unknown = null;
    await act(async () => {
      await hook.result.current.startStream("hi", "nope").catch((e: unknown) => (rejected = e));
    });
    expect(rejected).toMatchObject({ code: "unknown_model" });
    expect(hook.result.current).toMatchObject({
      status: "failed",
      isStreaming: false,
      error: { code: "unknown_model", message: "no such model", httpStatus: 400 },
    });
  });

  it("reports a stream that fails", async () => {
    const { client, hook } = setup();
    act(() => hook.result.current.resumeStream("c".repeat(21)));
    const error = { code: "provider_error", message: "upstream said no" };
    act(() => client.streams[0].update({ status: "failed", error, ended: true }));
    expect(hook.result.current).toMatchObject({ status: "failed", error, isStreaming: false });
  });

  it("stops: cancels on the server and ends cancelled", async () => {
    const { client, hook } = setup();
    await act(async () => {
      await hook.result.current.startStream("stop me");
    });
    act(() => client.streams[0].chunk("partial"));
    await act(async () => {
      await hook.result.current.stopStream();
    });
    expect(client.streams[0].stopped).toBe(true);
    expect(hook.result.current).toMatchObject({
      status: "cancelled",
      content: "partial",
      isStreaming: false,
    });
  });

  it("closeStream stops following without cancelling, and keeps what was shown", () => {
    const { client, hook } = setup();
    act(() => hook.result.current.resumeStream("l".repeat(21)));
    act(() => client.streams[0].chunk("kept"));
    act(() => hook.result.current.closeStream());
    expect(client.streams[0]).toMatchObject({ closed: true, stopped: false });
    expect(hook.result.current.content).toBe("kept");
    // Following it again opens a new stream (a replay from the start).
    act(() => hook.result.current.resumeStream("l".repeat(21)));
    expect(client.open).toHaveLength(1);
    expect(client.streams).toHaveLength(2);
  });

  it("closes the stream on unmount", async () => {
    const { client, hook } = setup();
    act(() => hook.result.current.resumeStream("d".repeat(21)));
    const stream = client.streams[0];
    hook.unmount();
    await waitFor(() => expect(stream.closed).toBe(true));
    expect(stream.listenerCount()).toBe(0);
    expect(stream.stopped).toBe(false); // closing follows no more; generation goes on
  });

  it("closes a start that resolves after unmount", async () => {
    const { client, hook } = setup();
    const started = hook.result.current.startStream("slow");
    hook.unmount();
    await act(async () => {
      await started;
    });
    await waitFor(() => expect(client.streams[0].closed).toBe(true));
  });

  it("closes the old stream when the session changes, and ignores its late events", async () => {
    const { client, hook } = setup();
    act(() => hook.result.current.resumeStream("e".repeat(21)));
    const old = client.streams[0];
    act(() => old.chunk("old text"));
    await act(async () => {
      await hook.result.current.startStream("new question");
    });
    expect(old.closed).toBe(true);
    expect(client.open).toHaveLength(1);
    old.closed = false; // even if the old stream spoke again, nothing of it shows
    act(() => old.chunk(" late"));
    act(() => client.streams[1].chunk("new text"));
    expect(hook.result.current).toMatchObject({
      sessionId: client.streams[1].sessionId,
      content: "new text",
    });
  });

  it("a resume of the session already followed opens nothing", () => {
    const { client, hook } = setup();
    act(() => hook.result.current.resumeStream("f".repeat(21)));
    act(() => hook.result.current.resumeStream("f".repeat(21)));
    expect(client.streams).toHaveLength(1);
    act(() => hook.result.current.resumeStream("g".repeat(21)));
    expect(client.streams.map((s) => s.closed)).toEqual([true, false]);
  });

  it("a second start before the first resolves keeps only the second", async () => {
    const { client, hook } = setup();
    await act(async () => {
      const first = hook.result.current.startStream("first");
      const second = hook.result.current.startStream("second");
      await Promise.all([first, second]);
    });
    expect(client.streams.map((s) => s.closed)).toEqual([true, false]);
    expect(hook.result.current.sessionId).toBe(client.streams[1].sessionId);
  });
});

function Resumer({ client, id }: { client: FakeClient; id: string }) {
  const { resumeStream, content, status } = useResumableStream({ client, recent: false });
  useEffect(() => {
    resumeStream(id);
  }, [id, resumeStream]);
  return (
    <p>
      <span data-testid="status">{status}</span>
      <span data-testid="answer">{content}</span>
    </p>
  );
}

function Starter({ client }: { client: FakeClient }) {
  const { startStream, content } = useResumableStream({ client, recent: false });
  return (
    <>
      <button type="button" onClick={() => void startStream("hello", "demo")}>
        Send
      </button>
      <span data-testid="answer">{content}</span>
    </>
  );
}

describe("under StrictMode", () => {
  it("a resume in an effect opens one stream and shows the text once", async () => {
    const client = new FakeClient();
    const view = render(
      <StrictMode>
        <Resumer client={client} id={"h".repeat(21)} />
      </StrictMode>,
    );
    // Past the double effects' deferred cleanup: the stream must still be open.
    await act(() => new Promise((resolve) => setTimeout(resolve, 10)));
    expect(client.streams).toHaveLength(1);
    expect(client.open).toHaveLength(1);
    act(() => client.streams[0].chunk("Hello, "));
    act(() => client.streams[0].chunk("world"));
    expect(screen.getByTestId("answer").textContent).toBe("Hello, world");
    expect(screen.getByTestId("status").textContent).toBe("running");
    expect(client.streams[0].listenerCount()).toBe(1);

    view.unmount();
    await waitFor(() => expect(client.streams[0].closed).toBe(true));
  });

  it("a start opens one stream and shows the text once", async () => {
    const client = new FakeClient();
    render(
      <StrictMode>
        <Starter client={client} />
      </StrictMode>,
    );
    await act(async () => {
      screen.getByRole("button", { name: "Send" }).click();
    });
    await waitFor(() => expect(client.streams).toHaveLength(1));
    await act(() => new Promise((resolve) => setTimeout(resolve, 10)));
    act(() => client.streams[0].chunk("once"));
    expect(screen.getByTestId("answer").textContent).toBe("once");
    expect(client.starts).toHaveLength(1);
    expect(client.open).toHaveLength(1);
  });

  it("moving to another session closes the old one", async () => {
    const client = new FakeClient();
    const view = render(
      <StrictMode>
        <Resumer client={client} id={"i".repeat(21)} />
      </StrictMode>,
    );
    view.rerender(
      <StrictMode>
        <Resumer client={client} id={"j".repeat(21)} />
      </StrictMode>,
    );
    await act(() => new Promise((resolve) => setTimeout(resolve, 10)));
    expect(client.streams.map((s) => [s.sessionId[0], s.closed])).toEqual([
      ["i", true],
      ["j", false],
    ]);
  });
});
