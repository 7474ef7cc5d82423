import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

// The build lands inside the Python package, so `imagegate serve` (and a wheel) carries it.
const outDir = fileURLToPath(new URL("../src/imagegate/api/ui_static", import.meta.url));

export default defineConfig({
  base: "/ui/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir,
    emptyOutDir: true,
    assetsDir: "assets",
    // One small app: a single chunk keeps the first load to two requests.
    chunkSizeWarningLimit: 200,
    sourcemap: false,
  },
  server: {
    // `npm run dev` against a local `imagegate serve` (IMAGEGATE_URL, default :8000).
    proxy: Object.fromEntries(
      ["/v1", "/v2", "/admin", "/media", "/api", "/healthz"].map((path) => [
        path,
        { target: process.env.IMAGEGATE_URL ?? "http://127.0.0.1:8000", changeOrigin: false },
      ]),
    ),
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
