// The package's mapping of a session's events, for tests/test_ai_sdk_browser.py: reads
// {"messageId", "events"} (the events as the API streams them) on stdin and writes the
// UI message chunks, as JSON, on stdout. Runs the built package (dist/index.js).
import { toUIMessageChunks } from "../dist/index.js";

let input = "";
for await (const piece of process.stdin) input += piece;
const { messageId, events } = JSON.parse(input);
process.stdout.write(JSON.stringify(toUIMessageChunks(events, messageId)));
