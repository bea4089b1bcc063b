// The package's mapping of sessions' events, for tests/test_ai_sdk_browser.py: reads a JSON
// list of {"messageId", "events"} (the events as the API streams them) on stdin and writes
// the list of their UI message chunks, as JSON, on stdout. Runs the built dist/index.js.
import { toUIMessageChunks } from "../dist/index.js";

let input = "";
for await (const piece of process.stdin) input += piece;
const sessions = JSON.parse(input);
process.stdout.write(JSON.stringify(sessions.map((s) => toUIMessageChunks(s.events, s.messageId))));
