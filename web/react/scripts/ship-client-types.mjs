// Ship the browser client's types in dist/: copy api/static/rstreams.d.ts to
// dist/rstreams.d.ts and point the emitted declarations at it, since the published
// package has no api/ folder (the client's code is bundled into dist/index.js).
import { copyFileSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const dist = new URL("../dist/", import.meta.url).pathname;
const source = new URL("../../../api/static/rstreams.d.ts", import.meta.url).pathname;
const inRepo = /(["'])(?:\.\.\/)+api\/static\/rstreams\.js\1/g;

copyFileSync(source, join(dist, "rstreams.d.ts"));
for (const name of readdirSync(dist)) {
  if (!name.endsWith(".d.ts") || name === "rstreams.d.ts") continue;
  const path = join(dist, name);
  const text = readFileSync(path, "utf8");
  writeFileSync(path, text.replace(inRepo, '"./rstreams.js"'));
}
