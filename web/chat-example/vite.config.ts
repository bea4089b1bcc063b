// The AI SDK chat example, served by the API at /examples/chat/ once built
// (api/examples.py). `npm run dev` serves it from Vite with the API proxied: start the
// stack first (scripts/dev.py) and set API_URL if it is not on 127.0.0.1:8000.
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

const api = process.env.API_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  base: "/examples/chat/",
  plugins: [react()],
  build: { outDir: "dist", emptyOutDir: true },
  server: {
    // The Host header is passed on unchanged, so the API sees the page's own origin and
    // needs no ALLOWED_ORIGINS entry for the dev server.
    proxy: { "/api": { target: api, ws: true } },
  },
});
