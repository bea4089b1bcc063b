// The peer of bench/peer.py: Vercel's `resumable-stream` (pinned by package-lock.json) at
// the product's loads. One role per process, as the product runs a worker and an API:
//
//   node server.mjs producer PORT   POST /start?id=&chunks=&rate=&size=&at=  makes a stream
//                                   (createNewResumableStream) whose chunks come at `rate`
//                                   a second from the epoch-ms `at`, and drains it itself
//   node server.mjs follower PORT   GET /follow/ID?skip=N  resumeExistingStream(ID, N), the
//                                   text as it comes (HTTP/1.0: no chunked encoding)
//
// Each chunk is one line, `{"i":<index>,"t":<Date.now() when made>}` padded to `size`:
// the client takes its latency from `t` and finds losses and repeats from `i`.
import http from "node:http";
import { createResumableStreamContext } from "resumable-stream";

const [role, port] = process.argv.slice(2);
const ctx = createResumableStreamContext({ waitUntil: null });

function line(index, size) {
  const text = `{"i":${index},"t":${Date.now()}}`;
  return text.padEnd(size - 1, " ") + "\n";
}

function chunks(count, rate, size, at) {
  let index = 0;
  return () =>
    new ReadableStream({
      async pull(controller) {
        if (index >= count) {
          controller.close();
          return;
        }
        const due = at + (index * 1000) / rate;
        const wait = due - Date.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        controller.enqueue(line(index, size));
        index += 1;
      },
    });
}

async function start(url, res) {
  const q = url.searchParams;
  const stream = await ctx.createNewResumableStream(
    q.get("id"),
    chunks(Number(q.get("chunks")), Number(q.get("rate")), Number(q.get("size")), Number(q.get("at"))),
  );
  res.writeHead(202).end();
  const reader = stream.getReader();
  while (!(await reader.read()).done);
}

async function follow(url, req, res) {
  const id = url.pathname.slice("/follow/".length);
  const stream = await ctx.resumeExistingStream(id, Number(url.searchParams.get("skip") || 0));
  if (!stream) {
    res.writeHead(stream === null ? 422 : 404).end();
    return;
  }
  res.writeHead(200, { "Content-Type": "text/plain" });
  const reader = stream.getReader();
  req.on("close", () => reader.cancel().catch(() => {}));
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    res.write(value);
  }
  res.end();
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://peer");
  const work =
    role === "producer" && url.pathname === "/start"
      ? start(url, res)
      : role === "follower" && url.pathname.startsWith("/follow/")
        ? follow(url, req, res)
        : Promise.resolve(res.writeHead(url.pathname === "/healthz" ? 200 : 404).end());
  work.catch((e) => {
    if (!res.headersSent) res.writeHead(500).end(String(e));
    else res.destroy();
  });
});
server.maxConnections = 100000;
server.listen(Number(port), "127.0.0.1");
