/**
 * The worker: registers with the rendezvous over WebSocket, reports its public
 * IP and UDP endpoint, punches to its peers; see README.md.
 *
 * Run: `RENDEZVOUS_SERVICE_URL=http://localhost:8080 deno task worker`.
 *
 * @module
 */

import {
  CONFIG_EXIT_CODE,
  createLogger,
  helpText,
  loadOrExit,
  processEnv,
} from "./lib/core/env.ts";
import { KeyFileError } from "./lib/worker/key_file.ts";
import { flushLogs } from "./lib/core/log.ts";
import { VERSION } from "./lib/core/version.ts";
import { loadWorkerConfig, WORKER_VARIABLES } from "./lib/worker/config.ts";
import { startWorker, type Worker } from "./lib/worker/worker.ts";

if (Deno.args.includes("--help") || Deno.args.includes("-h")) {
  console.log(helpText(`holepunch worker ${VERSION}`, "deno task worker", WORKER_VARIABLES));
  Deno.exit(0);
}

const config = loadOrExit("worker", () => loadWorkerConfig(processEnv(), Deno.stderr.isTerminal()));
const log = createLogger(config.log, "worker").child({ worker_id: config.workerId });
if (config.rendezvousWarning) log.warn(config.rendezvousWarning);

// Signal handlers go in before anything listens or connects.
let worker: Worker | undefined;
let stopping = false;
async function shutdown(signal: Deno.Signal): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info("shutdown signal received", { signal });
  await worker?.close();
  log.info("worker stopped");
  flushLogs();
  Deno.exit(0);
}
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.addSignalListener(signal, () => void shutdown(signal));
}

try {
  worker = await startWorker(config, { logger: log });
} catch (error) {
  if (error instanceof KeyFileError) {
    log.error(error.message, { path: error.path });
    flushLogs();
    Deno.exit(CONFIG_EXIT_CODE);
  }
  if (error instanceof Deno.errors.AddrInUse || error instanceof Deno.errors.PermissionDenied) {
    log.error("cannot listen for PEER_FORWARD", { error: (error as Error).message });
    flushLogs();
    Deno.exit(1);
  }
  throw error;
}
