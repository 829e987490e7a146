// node run.mjs SCENARIO: run scenarios/SCENARIO.mjs with JSON arguments from stdin (see lib/harness.mjs).
import { pathToFileURL } from "node:url";
import { resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { runScenario } from "./lib/harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const name = process.argv[2];
if (!name || !/^[a-z0-9_]+$/.test(name)) {
  process.stdout.write(JSON.stringify({ ok: false, error: "usage: node run.mjs SCENARIO" }) + "\n");
  process.exit(2);
}
await runScenario(pathToFileURL(resolve(here, "scenarios", name + ".mjs")).href);
