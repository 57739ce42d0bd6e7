/**
 * A standalone STUN server (RFC 8489 Binding; RFC 5780 with STUN_ALT_HOST).
 * Cloud Run cannot receive UDP: run it on a VM, GKE, or any host with a
 * public UDP port. See README.md.
 *
 * Run: `deno task stun`.
 *
 * @module
 */

import {
  createLogger,
  helpText,
  loadOrExit,
  LOG_VARIABLES,
  logConfig,
  processEnv,
} from "./lib/core/env.ts";
import { flushLogs } from "./lib/core/log.ts";
import { loadStunConfig, startStunOrExit, STUN_VARIABLES } from "./lib/stun/config.ts";
import type { StunServer } from "./lib/stun/server.ts";
import { VERSION } from "./lib/core/version.ts";

if (Deno.args.includes("--help") || Deno.args.includes("-h")) {
  console.log(
    helpText(`holepunch stun ${VERSION}`, "deno task stun", [...STUN_VARIABLES, ...LOG_VARIABLES]),
  );
  Deno.exit(0);
}

const env = processEnv();
const { options, log: logSettings } = loadOrExit("stun", () => ({
  options: loadStunConfig(env, { port: 3478, hostname: "0.0.0.0" })!,
  log: logConfig(env, Deno.stderr.isTerminal()),
}));
const log = createLogger(logSettings, "stun");

// Handlers go in first; they run only after this module has finished,
// when `server` (below) exists.
async function shutdown(signal: Deno.Signal): Promise<void> {
  await server.close();
  log.info("stun server stopped", { signal, ...server.stats });
  flushLogs();
  Deno.exit(0);
}
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.addSignalListener(signal, () => void shutdown(signal));
}

const server: StunServer = startStunOrExit(options, log, { version: VERSION });
