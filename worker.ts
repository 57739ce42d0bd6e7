/**
 * The worker: registers with the rendezvous over WebSocket, reports its public
 * IP, keeps the connection alive and reconnects; see README.md.
 *
 * Run: `RENDEZVOUS_SERVICE_URL=http://localhost:8080 deno task worker`.
 *
 * @module
 */

import { Backoff } from "./lib/core/backoff.ts";
import { createLogger, helpText, loadOrExit, processEnv } from "./lib/core/env.ts";
import { flushLogs } from "./lib/core/log.ts";
import { fetchPublicIp } from "./lib/worker/public_ip.ts";
import { VERSION } from "./lib/core/version.ts";
import { RendezvousClient } from "./lib/worker/client.ts";
import { loadWorkerConfig, registrationUrl, WORKER_VARIABLES } from "./lib/worker/config.ts";
import { workerHealthHandler } from "./lib/worker/health.ts";
import { startWorkerUdp, type WorkerUdp } from "./lib/worker/udp.ts";
import { PeerManager } from "./lib/peer/manager.ts";
import { describeHello, sendHello, startHello } from "./lib/worker/hello.ts";

if (Deno.args.includes("--help") || Deno.args.includes("-h")) {
  console.log(helpText(`holepunch worker ${VERSION}`, "deno task worker", WORKER_VARIABLES));
  Deno.exit(0);
}

const config = loadOrExit("worker", () => loadWorkerConfig(processEnv(), Deno.stderr.isTerminal()));
const log = createLogger(config.log, "worker").child({ worker_id: config.workerId });
if (config.rendezvousWarning) log.warn(config.rendezvousWarning);

const { ipEchoUrl, ipEchoTimeoutMs } = config;
let udp: WorkerUdp | undefined;
const client = new RendezvousClient({
  url: registrationUrl(config.rendezvousBase, config.workerId, config.group),
  workerId: config.workerId,
  token: config.token,
  pingIntervalMs: config.pingIntervalMs,
  pingTimeoutMs: config.pingTimeoutMs,
  backoff: new Backoff({ baseMs: config.reconnectBaseMs, maxMs: config.reconnectMaxMs }),
  lookupPublicIp: ipEchoUrl === undefined
    ? undefined
    : (signal) => fetchPublicIp(ipEchoUrl, { signal, timeoutMs: ipEchoTimeoutMs }),
  logger: log,
  onEvent: (event) => {
    if (event.type !== "registered") return;
    udp?.onRegistered();
    // Without UDP, peers still learn we exist and can only be relayed to.
    if (!udp) {
      client.send({
        type: "register_udp_endpoint",
        public: null,
        local: [],
        nat: { mapping: "no-udp" },
        rtt_ms: client.rttMs,
      });
    }
    peers.onRegistered();
  },
  onPeerMessage: (message) => peers.handle(message),
});

if (config.stunServers.length > 0) {
  udp = startWorkerUdp({
    hostname: config.udpHost,
    port: config.udpPort,
    stunServers: config.stunServers,
    keepaliveMs: config.stunKeepaliveMs,
    logger: log,
    report: (report) => {
      const sent = client.send({ type: "register_udp_endpoint", ...report, rtt_ms: client.rttMs });
      if (sent) peers.ownEndpointReported(report.public);
      return sent;
    },
  });
}

// Referenced by the callbacks above, which run only once the client runs.
const peers: PeerManager = new PeerManager({
  udp: udp?.udp,
  sendToRendezvous: (message) => client.send(message),
  autoConnect: config.peerAutoConnect,
  logger: log,
  // Hello 0 goes out as soon as a peer is known: queued until the
  // introduction, then relayed at once (time to first relayed byte).
  onPeer: (peerId) => {
    if (config.peerHelloMs > 0) sendHello(peers, peerId, config.workerId, 0);
  },
  onMessage: (peerId, payload, path) =>
    log.info("peer message received", { peer_id: peerId, path, ...describeHello(payload) }),
});
if (!udp) peers.ownEndpointReported(null);
const hello = config.peerHelloMs > 0
  ? startHello(peers, config.workerId, config.peerHelloMs)
  : undefined;

log.info("worker starting", { version: VERSION, ip_echo_url: ipEchoUrl ?? "off" });

const stop = new AbortController();
// Signal handlers go in before anything listens or connects.
let stopping = false;
async function shutdown(signal: Deno.Signal): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info("shutdown signal received", { signal });
  stop.abort();
  if (hello !== undefined) clearInterval(hello);
  await running;
  await peers.close();
  await udp?.close();
  await Promise.race([health.finished, new Promise((r) => setTimeout(r, 1000))]);
  log.info("worker stopped");
  flushLogs();
  Deno.exit(0);
}

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.addSignalListener(signal, () => void shutdown(signal));
}

const health = Deno.serve(
  {
    port: config.port,
    hostname: config.hostname,
    signal: stop.signal,
    onListen: ({ hostname, port }) => log.info("health server listening", { hostname, port }),
  },
  workerHealthHandler({
    workerId: config.workerId,
    version: VERSION,
    snapshot: () => client.snapshot(),
    udp: () => udp?.presence.last ?? null,
    peers: () => peers.snapshot() ?? {},
  }),
);

const running = client.run(stop.signal);
