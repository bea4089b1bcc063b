// Library build: one ESM file with the browser client (api/static/rstreams.js) inside it,
// React left to the application. `tsc -p tsconfig.build.json` and
// scripts/ship-client-types.mjs write the declarations next to it.
import { defineConfig } from "vitest/config";

export default defineConfig({
  build: {
    lib: { entry: "src/index.ts", formats: ["es"], fileName: "index" },
    rolldownOptions: { external: [/^react($|\/)/, /^react-dom($|\/)/] },
    sourcemap: true,
    minify: false, // the application's bundler minifies; keep the published code readable
    target: "es2020",
    emptyOutDir: true,
  },
  oxc: { jsx: { runtime: "automatic" } },
  test: {
    environment: "jsdom",
    include: ["test/**/*.test.{ts,tsx}"],
  },
});
