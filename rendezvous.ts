/**
 * The rendezvous service: workers register over WebSocket at
 * `/ws/register/{worker_id}`; see README.md for configuration.
 *
 * Run: `deno task rendezvous` (or `deno run --allow-net --allow-env rendezvous.ts`).
 *
 * @module
 */

import { createLogger, helpText, loadOrExit, processEnv } from "./lib/core/env.ts";
import { flushLogs } from "./lib/core/log.ts";
import { NAME, VERSION } from "./lib/core/version.ts";
import { loadRendezvousConfig, RENDEZVOUS_VARIABLES } from "./lib/rendezvous/config.ts";
import { type RendezvousService, startRendezvous } from "./lib/rendezvous/service.ts";
import { logStunStartFailure } from "./lib/stun/config.ts";

if (Deno.args.includes("--help") || Deno.args.includes("-h")) {
  console.log(
    helpText(`${NAME} rendezvous ${VERSION}`, "deno task rendezvous", RENDEZVOUS_VARIABLES),
  );
  Deno.exit(0);
}

const config = loadOrExit(
  "rendezvous",
  () => loadRendezvousConfig(processEnv(), Deno.stderr.isTerminal()),
);
const log = createLogger(config.log, "rendezvous");

// Signal handlers go in before the server listens: a SIGTERM that arrives
// right after "listening" must drain, not kill. startRendezvous is
// synchronous, so `service` is set before any handler can run.
let stopping = false;
async function shutdown(signal: Deno.Signal): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info("shutdown signal received", { signal });
  await service.close();
  log.info("rendezvous stopped");
  flushLogs();
  Deno.exit(0);
}
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.addSignalListener(signal, () => void shutdown(signal));
}

let service: RendezvousService;
try {
  service = startRendezvous(config, { logger: log });
} catch (error) {
  logStunStartFailure(config.stun!, log, error);
  flushLogs();
  Deno.exit(1);
}
