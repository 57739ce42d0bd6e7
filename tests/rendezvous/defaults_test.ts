/**
 * One value, one place: the rendezvous's defaults live in
 * `RENDEZVOUS_DEFAULTS`, and the options, the environment config, the
 * options' docs, `--help` and docs/configuration.md's tables must all say
 * the same (a default written twice once gave embedders twice the
 * documented KEY_HOLD_SEC).
 */

import assert from "node:assert/strict";
import type { VariableDoc } from "../../lib/core/env.ts";
import { loadRendezvousConfig, RENDEZVOUS_VARIABLES } from "../../lib/rendezvous/config.ts";
import { defaultPerClient, RENDEZVOUS_DEFAULTS } from "../../lib/rendezvous/options.ts";
import { Rendezvous } from "../../lib/rendezvous/server.ts";
import { WORKER_VARIABLES } from "../../lib/worker/config.ts";
import { ROOT } from "../_helpers.ts";

/** Environment variable → the key of the table it sets. */
const VARIABLE_KEYS: Record<string, keyof typeof RENDEZVOUS_DEFAULTS> = {
  MAX_CONNECTIONS: "maxConnections",
  HANDSHAKE_RATE_PER_SEC: "handshakeRatePerSec",
  HANDSHAKE_BURST: "handshakeBurst",
  MAX_MESSAGE_BYTES: "maxMessageBytes",
  IDLE_TIMEOUT_SEC: "idleTimeoutSec",
  MESSAGE_RATE_PER_SEC: "messageRatePerSec",
  MESSAGE_BURST: "messageBurst",
  RELAY_RATE_PER_SEC: "relayRatePerSec",
  RELAY_BURST: "relayBurst",
  RELAY_BYTES_PER_SEC: "relayBytesPerSec",
  MAX_SEND_BUFFER_BYTES: "maxSendBufferBytes",
  LIST_RATE_PER_MIN: "listRatePerMin",
  REQUIRE_WORKER_KEYS: "requireWorkerKeys",
  KEY_HOLD_SEC: "keyHoldSec",
  SHUTDOWN_TIMEOUT_SEC: "shutdownTimeoutSec",
};

Deno.test("the environment's defaults are the table's, and so is --help", () => {
  const config = loadRendezvousConfig({}) as unknown as Record<string, unknown>;
  for (const [variable, key] of Object.entries(VARIABLE_KEYS)) {
    assert.equal(config[key], RENDEZVOUS_DEFAULTS[key], variable);
    const doc = RENDEZVOUS_VARIABLES.find((v) => v.name === variable);
    assert.equal(doc?.fallback, String(RENDEZVOUS_DEFAULTS[key]), `--help for ${variable}`);
  }
  assert.equal(config.maxSessionsPerIp, defaultPerClient(RENDEZVOUS_DEFAULTS.maxConnections));
  assert.equal(config.maxSessionsPerKey, defaultPerClient(RENDEZVOUS_DEFAULTS.maxConnections));
  assert.equal(
    (config.fleet as { ttlSec: number } | undefined)?.ttlSec,
    undefined,
    "no fleet without REDIS_URL",
  );
  const fleet = loadRendezvousConfig({ REDIS_URL: "redis://127.0.0.1:6379" }).fleet!;
  assert.equal(fleet.ttlSec, RENDEZVOUS_DEFAULTS.fleetTtlSec);
});

Deno.test("a Rendezvous made with no options has the table's defaults", async () => {
  const rendezvous = new Rendezvous();
  try {
    const settings = rendezvous.settings as unknown as Record<string, unknown>;
    for (const [key, value] of Object.entries(RENDEZVOUS_DEFAULTS)) {
      if (key === "shutdownTimeoutSec" || key === "fleetTtlSec") continue; // the service's, not the server's
      assert.equal(settings[key], value, key);
    }
    assert.equal(settings.maxSessionsPerIp, defaultPerClient(RENDEZVOUS_DEFAULTS.maxConnections));
  } finally {
    await rendezvous.close();
  }
});

Deno.test("the options' documented defaults are the table's", async () => {
  const source = await Deno.readTextFile(new URL("lib/rendezvous/options.ts", ROOT));
  const documented = new Map<string, string>();
  for (const m of source.matchAll(/@default \{([^}]*)\}\s*\*\/\s*(\w+)\?:/g)) {
    documented.set(m[2], m[1]);
  }
  for (const [key, value] of Object.entries(RENDEZVOUS_DEFAULTS)) {
    if (!documented.has(key)) continue; // not an option (the service's own)
    assert.equal(documented.get(key), String(value), `@default of ${key}`);
  }
  assert.ok(documented.size >= 15, `found ${documented.size} documented defaults`);
});

/** docs/configuration.md's table under `heading`: variable → default as written. */
async function docsTable(heading: string): Promise<Map<string, string>> {
  const text = await Deno.readTextFile(new URL("docs/configuration.md", ROOT));
  const at = text.indexOf(`\n${heading}\n`);
  assert.ok(at >= 0, heading);
  const rows = new Map<string, string>();
  for (const line of text.slice(at).split("\n").slice(2)) {
    if (line.startsWith("#") || line.startsWith("**")) break;
    const cells = line.split("|").map((c) => c.trim());
    const name = /^`([A-Z0-9_]+)`$/.exec(cells[1] ?? "")?.[1];
    if (name) rows.set(name, cells[2]);
  }
  return rows;
}

/** A default as the docs write it: `value` in backticks, or words for "unset". */
function sameDefault(written: string | undefined, doc: VariableDoc): boolean {
  if (written === undefined) return false;
  const code = /^`([^`]*)`$/.exec(written)?.[1];
  if (code !== undefined) return code === doc.fallback;
  if (written.replaceAll("`", "") === doc.fallback) return true; // `json` (`text` on a terminal)
  // Prose ("unset (open)", "required", "none"): the same words, or "unset" for a parenthesized note.
  const words = written.toLowerCase();
  const fallback = doc.fallback.toLowerCase();
  return words === fallback || words === fallback.replace(/[()]/g, "") ||
    (words.startsWith("unset") && fallback.startsWith("("));
}

Deno.test("docs/configuration.md says what --help says, for every variable and no other", async () => {
  for (
    const [heading, variables] of [
      ["## Rendezvous", RENDEZVOUS_VARIABLES],
      ["## Worker", WORKER_VARIABLES],
    ] as const
  ) {
    const table = await docsTable(heading);
    const wrong: string[] = [];
    for (const doc of variables) {
      // The worker's table has one row for both log variables ("as above").
      if (heading === "## Worker" && /^LOG_/.test(doc.name)) continue;
      if (!sameDefault(table.get(doc.name), doc)) {
        wrong.push(`${doc.name}: docs ${table.get(doc.name)}, --help ${doc.fallback}`);
      }
    }
    const known = new Set(variables.map((v) => v.name));
    for (const name of table.keys()) if (!known.has(name)) wrong.push(`${name}: not a variable`);
    assert.deepEqual(wrong, [], heading);
  }
});
