// Reads one UI message stream of the chat routes with the AI SDK's own code:
// `parseJsonEventStream` + `uiMessageChunkSchema` for every chunk, `readUIMessageStream`
// to assemble the message, as DefaultChatTransport does.
// In (env REQUEST): {url, method, headers, body}. Out (stdout): {status, headers, chunks,
// invalid, message, done}.
import { parseJsonEventStream, readUIMessageStream, uiMessageChunkSchema } from "ai";

const request = JSON.parse(process.env.REQUEST);
const response = await fetch(request.url, {
  method: request.method ?? "GET",
  headers: request.headers ?? {},
  body: request.body === undefined ? undefined : JSON.stringify(request.body),
});
const headers = Object.fromEntries(response.headers.entries());
if (response.status !== 200 || !response.body) {
  console.log(JSON.stringify({ status: response.status, headers, text: await response.text() }));
  process.exit(0);
}
const [raw, body] = response.body.tee();
const text = new Response(raw).text();
const chunks = [];
const invalid = [];
const parsed = parseJsonEventStream({ stream: body, schema: uiMessageChunkSchema }).pipeThrough(
  new TransformStream({
    transform(result, controller) {
      if (result.success) {
        chunks.push(result.value);
        controller.enqueue(result.value);
      } else {
        invalid.push({ raw: result.rawValue, error: String(result.error) });
      }
    },
  }),
);
let message = null;
const errors = [];
for await (const state of readUIMessageStream({ stream: parsed, onError: (e) => errors.push(String(e)) })) {
  message = state;
}
const whole = await text;
console.log(
  JSON.stringify({
    status: response.status,
    headers,
    chunks,
    invalid,
    errors,
    message,
    done: whole.endsWith("data: [DONE]\n\n"),
    pings: whole.split("\n").filter((line) => line === ": ping").length,
  }),
);
