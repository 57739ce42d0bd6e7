/**
 * The rendezvous service: workers register over WebSocket at
 * `/ws/register/{worker_id}`; see docs/configuration.md.
 *
 * Run: `deno task rendezvous` (or `deno run --allow-net --allow-env rendezvous.ts`).
 *
 * @module
 */

import { exitAfterLogs, exitOnHelp, onStopSignal } from "./lib/core/entry.ts";
import { createLogger, loadOrExit, processEnv } from "./lib/core/env.ts";
import { NAME, VERSION } from "./lib/core/version.ts";
import { loadRendezvousConfig, RENDEZVOUS_VARIABLES } from "./lib/rendezvous/config.ts";
import { type RendezvousService, startRendezvous } from "./lib/rendezvous/service.ts";
import { BansFileError } from "./lib/rendezvous/bans_file.ts";
import { BindingsFileError } from "./lib/rendezvous/bindings_file.ts";
import { logStunStartFailure } from "./lib/stun/config.ts";

exitOnHelp(`${NAME} rendezvous ${VERSION}`, "deno task rendezvous", RENDEZVOUS_VARIABLES);

const config = loadOrExit(
  "rendezvous",
  () => loadRendezvousConfig(processEnv(), Deno.stderr.isTerminal()),
);
const log = createLogger(config.log, "rendezvous");

// Signal handlers go in before the server listens: a SIGTERM that arrives
// right after "listening" must drain, not kill. startRendezvous is
// synchronous, so `service` is set before any handler can run.
onStopSignal(log, async () => {
  await service.close();
  log.info("rendezvous stopped");
});

let service: RendezvousService;
try {
  service = startRendezvous(config, { logger: log });
} catch (error) {
  if (error instanceof BindingsFileError || error instanceof BansFileError) {
    log.error("cannot start: cannot use its state file", { error: error.message });
    exitAfterLogs(2);
  }
  logStunStartFailure(config.stun!, log, error);
  exitAfterLogs(1);
}
