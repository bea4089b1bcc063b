// Validates UI message chunks (env CHUNKS, a JSON array) as the AI SDK reads a stream:
// `parseJsonEventStream` with the pinned `ai` package's `uiMessageChunkSchema`.
// Out (stdout): the indices of the chunks it refuses.
import { parseJsonEventStream, uiMessageChunkSchema } from "ai";

const chunks = JSON.parse(process.env.CHUNKS);
const body = new Response(chunks.map((c) => `data: ${JSON.stringify(c)}\n\n`).join("")).body;
const invalid = [];
let n = 0;
for await (const result of parseJsonEventStream({ stream: body, schema: uiMessageChunkSchema })) {
  if (!result.success) invalid.push(n);
  n += 1;
}
console.log(JSON.stringify(invalid));
