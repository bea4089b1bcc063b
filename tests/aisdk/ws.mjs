// Drives GET /api/chat/ws with the AI SDK's own WebSocketChatTransport (Node's global
// WebSocket) and assembles what it gets with `readUIMessageStream`, as useChat does.
// In (env SCENARIO): {url, mode, chatId, messages, body, headers, take}. Modes: "send"
// and "resume" (each up to `take` chunks); "reconnect": send, close that transport after
// `take` chunks, then resume on a new one (a new connection) at once. Out (stdout): {first?, chunks, message,
// error, active (false when a resume found nothing)}.
import { WebSocketChatTransport, readUIMessageStream } from "ai";

const scenario = JSON.parse(process.env.SCENARIO);

function newTransport() {
  return new WebSocketChatTransport({ url: scenario.url, headers: scenario.headers ?? {} });
}

async function send(transport) {
  return transport.sendMessages({
    trigger: "submit-message",
    chatId: scenario.chatId,
    messageId: undefined,
    messages: scenario.messages,
    abortSignal: undefined,
    body: scenario.body ?? {},
  });
}

// Reads a response stream (up to `take` chunks) and the message useChat would build.
async function read(transport, stream, take) {
  if (stream === null) {
    transport.close();
    return { active: false };
  }
  const chunks = [];
  const [mine, theirs] = stream.tee();
  const reader = mine.getReader();
  let message = null;
  const assembled = (async () => {
    try {
      for await (const state of readUIMessageStream({ stream: theirs })) message = state;
    } catch {
      // the transport was closed on purpose mid-answer
    }
  })();
  let error = null;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      if (take && chunks.length >= take) break;
    }
  } catch (e) {
    error = String(e);
  }
  transport.close();
  await assembled;
  return { active: true, chunks, message, error };
}

let out;
if (scenario.mode === "send") {
  const transport = newTransport();
  out = await read(transport, await send(transport), scenario.take);
} else if (scenario.mode === "resume") {
  const transport = newTransport();
  out = await read(
    transport,
    await transport.reconnectToStream({ chatId: scenario.chatId }),
    scenario.take,
  );
} else {
  const first = newTransport();
  const before = await read(first, await send(first), scenario.take);
  const second = newTransport();
  out = await read(second, await second.reconnectToStream({ chatId: scenario.chatId }));
  out.first = before.chunks;
}
console.log(JSON.stringify(out));
