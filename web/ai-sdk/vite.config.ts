// Library build: one ESM file with the browser client (api/static/rstreams.js) inside it,
// the `ai` package left to the application. `tsc -p tsconfig.build.json` writes the
// declarations next to it; they name no type of the client, so the package ships none.
import { defineConfig } from "vitest/config";

export default defineConfig({
  build: {
    lib: { entry: "src/index.ts", formats: ["es"], fileName: "index" },
    rolldownOptions: { external: [/^ai($|\/)/] },
    sourcemap: true,
    minify: false, // the application's bundler minifies; keep the published code readable
    target: "es2020",
    emptyOutDir: true,
  },
  test: {
    environment: "node",
    include: ["test/**/*.test.ts"],
  },
});
