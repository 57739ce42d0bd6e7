/**
 * A standalone STUN server (RFC 8489 Binding; RFC 5780 with STUN_ALT_HOST).
 * Cloud Run cannot receive UDP: run it on a VM, GKE, or any host with a
 * public UDP port. See README.md.
 *
 * Run: `deno task stun`.
 *
 * @module
 */

import { exitOnHelp, onStopSignal } from "./lib/core/entry.ts";
import { createLogger, loadOrExit, LOG_VARIABLES, logConfig, processEnv } from "./lib/core/env.ts";
import { loadStunConfig, startStunOrExit, STUN_VARIABLES } from "./lib/stun/config.ts";
import type { StunServer } from "./lib/stun/server.ts";
import { VERSION } from "./lib/core/version.ts";

exitOnHelp(`holepunch stun ${VERSION}`, "deno task stun", [...STUN_VARIABLES, ...LOG_VARIABLES]);

const env = processEnv();
const { options, log: logSettings } = loadOrExit("stun", () => ({
  options: loadStunConfig(env, { port: 3478, hostname: "0.0.0.0" })!,
  log: logConfig(env, Deno.stderr.isTerminal()),
}));
const log = createLogger(logSettings, "stun");

// Handlers go in first; they run only after this module has finished,
// when `server` (below) exists.
onStopSignal(log, async () => {
  await server.close();
  log.info("stun server stopped", { ...server.stats });
});

const server: StunServer = startStunOrExit(options, log, { version: VERSION });
