// Builds the two pages the browser tests open (see docs/clients.md): index.html (Hydrogen, the
// complete web client of hydrogen-view-sdk) and chat.html (our small chat page on
// matrix-js-sdk with its Rust crypto). Output in dist/ (or --outDir),
// served by tests/browserclient.py.
import { readFileSync } from "node:fs";
import { resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const here = dirname(fileURLToPath(import.meta.url));

// Hydrogen's service worker must be served from the root of the page's origin (it adds the
// access token to authenticated media requests, /_matrix/client/v1/media/...).
const hydrogenServiceWorker = {
  name: "hydrogen-service-worker",
  generateBundle() {
    this.emitFile({
      type: "asset",
      fileName: "sw.js",
      source: readFileSync(resolve(here, "node_modules/hydrogen-view-sdk/lib-build/sw.js")),
    });
  },
};

export default defineConfig({
  root: here,
  base: "/",
  logLevel: "warn",
  plugins: [hydrogenServiceWorker],
  build: {
    outDir: resolve(here, "dist"),
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    chunkSizeWarningLimit: 8000,
    rollupOptions: {
      input: {
        hydrogen: resolve(here, "index.html"),
        chat: resolve(here, "chat.html"),
      },
    },
  },
});
