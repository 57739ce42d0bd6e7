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
import { loadRendezvousConfig, RENDEZVOUS_VARIABLES } from "./lib/rendezvous/config.ts";
import { Rendezvous } from "./lib/rendezvous/server.ts";
import { serveResilient } from "./lib/rendezvous/resilient_serve.ts";
import { startStunOrExit } from "./lib/stun/config.ts";
import type { StunServer } from "./lib/stun/server.ts";
import { NAME, VERSION } from "./lib/core/version.ts";

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
const rendezvous = new Rendezvous({
  token: config.token,
  trustProxyHops: config.trustProxyHops,
  maxConnections: config.maxConnections,
  maxMessageBytes: config.maxMessageBytes,
  idleTimeoutSec: config.idleTimeoutSec,
  messageRatePerSec: config.messageRatePerSec,
  messageBurst: config.messageBurst,
  relayRatePerSec: config.relayRatePerSec,
  relayBurst: config.relayBurst,
  logger: log,
  name: `${NAME}-rendezvous`,
  version: VERSION,
});

let stun: StunServer | undefined;

// Signal handlers go in before the server listens: a SIGTERM that arrives
// right after "listening" must drain, not kill.
let stopping = false;
async function shutdown(signal: Deno.Signal): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info("shutdown signal received", { signal });
  const timeoutMs = config.shutdownTimeoutSec * 1000;
  await rendezvous.close(timeoutMs);
  await stun?.close();
  await Promise.race([server.shutdown(), new Promise((r) => setTimeout(r, 1000))]);
  log.info("rendezvous stopped");
  flushLogs();
  Deno.exit(0);
}

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.addSignalListener(signal, () => void shutdown(signal));
}

const server = serveResilient({
  port: config.port,
  hostname: config.hostname,
  logger: log,
  onListen: ({ hostname, port }) => {
    rendezvous.markReady();
    log.info("rendezvous listening", {
      hostname,
      port,
      version: VERSION,
      auth: config.token !== undefined,
      trust_proxy_hops: config.trustProxyHops,
    });
  },
  onError: (error) => {
    log.error("request handler failed", { error });
    return new Response("Internal Server Error", { status: 500 });
  },
}, rendezvous.handler);

if (config.stun) stun = startStunOrExit(config.stun, log);
