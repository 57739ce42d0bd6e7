/**
 * The worker: registers with the rendezvous over WebSocket, reports its public
 * IP and UDP endpoint, punches to its peers; see README.md.
 *
 * Run: `RENDEZVOUS_SERVICE_URL=http://localhost:8080 deno task worker`.
 *
 * @module
 */

import { createLogger, helpText, loadOrExit, processEnv } from "./lib/core/env.ts";
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

// Signal handlers go in before anything listens or connects; startWorker is
// synchronous, so `worker` is set before any handler can run.
let stopping = false;
async function shutdown(signal: Deno.Signal): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info("shutdown signal received", { signal });
  await worker.close();
  log.info("worker stopped");
  flushLogs();
  Deno.exit(0);
}
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.addSignalListener(signal, () => void shutdown(signal));
}

const worker: Worker = startWorker(config, { logger: log });
