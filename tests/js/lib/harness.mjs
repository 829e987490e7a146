// Shared helpers for the scenarios run by tests/jsclient.py: a scenario is a module whose
// default export is `async (args) => result`; this file runs it with the JSON arguments
// given on stdin and prints one JSON line `{"ok": true, "result": ...}` (or
// `{"ok": false, "error": ...}`) as the last line of stdout.

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

// js-sdk logs every request at debug level; keep warnings (they go to stderr, which the
// Python side shows when a scenario fails).
logger.setLevel(process.env.FEDSERVER_JS_LOG || "warn");

export { sdk };

/** Log in with a password and return a started client (initial sync done). */
export async function login(baseUrl, user, password, opts = {}) {
  const tmp = sdk.createClient({ baseUrl });
  const resp = await tmp.login("m.login.password", {
    identifier: { type: "m.id.user", user },
    password,
    initial_device_display_name: opts.deviceName || "fedserver js test",
  });
  const client = sdk.createClient({
    baseUrl,
    accessToken: resp.access_token,
    userId: resp.user_id,
    deviceId: resp.device_id,
    ...(opts.clientOpts || {}),
  });
  if (opts.start !== false) {
    await startAndWait(client, opts.startOpts || {});
  }
  return client;
}

/** Start the client and wait for its first sync to be prepared. */
export async function startAndWait(client, startOpts = {}, timeoutMs = 30000) {
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("first sync did not finish")), timeoutMs);
    const onSync = (state, _prev, data) => {
      if (state === "PREPARED" || state === "SYNCING") {
        clearTimeout(timer);
        client.off(sdk.ClientEvent.Sync, onSync);
        resolve();
      } else if (state === "ERROR") {
        // keep waiting: the sdk retries; the timeout reports persistent failures
        process.stderr.write(`sync error: ${data && data.error}\n`);
      }
    };
    client.on(sdk.ClientEvent.Sync, onSync);
  });
  await client.startClient({ initialSyncLimit: 20, ...startOpts });
  await ready;
}

/** Wait until `predicate()` is truthy (polling), or fail with `what`. */
export async function waitFor(predicate, what, timeoutMs = 30000, intervalMs = 100) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** The bodies of the m.room.message events in a room's live timeline, in order. */
export function timelineBodies(client, roomId) {
  const room = client.getRoom(roomId);
  if (!room) return [];
  return room
    .getLiveTimeline()
    .getEvents()
    .filter((e) => e.getType() === "m.room.message")
    .map((e) => e.getContent().body);
}

/** Stop clients quietly. */
export function stopAll(...clients) {
  for (const c of clients) {
    try {
      c.stopClient();
    } catch (e) {
      // already stopped
    }
  }
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

/** Entry point used by run.mjs. */
export async function runScenario(path) {
  let out;
  try {
    const args = JSON.parse((await readStdin()) || "{}");
    const mod = await import(path);
    const result = await mod.default(args);
    out = { ok: true, result: result === undefined ? null : result };
  } catch (e) {
    out = { ok: false, error: String((e && e.stack) || e) };
  }
  process.stdout.write("\n" + JSON.stringify(out) + "\n");
  // The sdk keeps timers alive; the scenario is over.
  process.exit(out.ok ? 0 : 1);
}
