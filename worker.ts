/**
 * The worker: registers with the rendezvous over WebSocket, reports its public
 * IP and UDP endpoint, punches to its peers; see README.md and docs/.
 *
 * Run: `RENDEZVOUS_SERVICE_URL=http://localhost:8080 deno task worker`.
 *
 * @module
 */

import { UdpIoError } from "./lib/worker/udp.ts";
import { exitAfterLogs, exitOnHelp, onStopSignal } from "./lib/core/entry.ts";
import { CONFIG_EXIT_CODE, createLogger, loadOrExit, processEnv } from "./lib/core/env.ts";
import { KeyFileError } from "./lib/worker/key_file.ts";
import { VERSION } from "./lib/core/version.ts";
import { loadWorkerConfig, WORKER_VARIABLES } from "./lib/worker/config.ts";
import { startWorker, type Worker } from "./lib/worker/worker.ts";

exitOnHelp(`holepunch worker ${VERSION}`, "deno task worker", WORKER_VARIABLES);

const config = loadOrExit("worker", () => loadWorkerConfig(processEnv(), Deno.stderr.isTerminal()));
const log = createLogger(config.log, "worker").child({ worker_id: config.workerId });
if (config.rendezvousWarning) log.warn(config.rendezvousWarning);

// Signal handlers go in before anything listens or connects.
let worker: Worker | undefined;
onStopSignal(log, async () => {
  await worker?.close();
  log.info("worker stopped");
});

try {
  worker = await startWorker(config, { logger: log });
} catch (error) {
  if (error instanceof KeyFileError) {
    log.error(error.message, { path: error.path });
    exitAfterLogs(CONFIG_EXIT_CODE);
  }
  if (error instanceof UdpIoError) {
    log.error(error.message);
    exitAfterLogs(CONFIG_EXIT_CODE);
  }
  if (error instanceof Deno.errors.AddrInUse || error instanceof Deno.errors.PermissionDenied) {
    log.error("cannot listen for PEER_FORWARD", { error: (error as Error).message });
    exitAfterLogs(1);
  }
  throw error;
}
