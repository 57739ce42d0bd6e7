/**
 * `deno task demo`: a rendezvous and three workers, started in this process
 * through the public API (`startRendezvous`, `startWorker`), with a local IP
 * echo stand-in instead of api.ipify.org; prints the registry table and each
 * pair's path, then shuts down cleanly. Nothing leaves loopback.
 *
 * @module
 */

import { ipEchoHandler } from "../rendezvous/ip_echo.ts";
import { loadRendezvousConfig } from "../rendezvous/config.ts";
import { startRendezvous } from "../rendezvous/service.ts";
import type { PathKind, WorkerListing } from "../protocol/messages.ts";
import { formatAddress } from "../stun/client.ts";
import { StunServer } from "../stun/server.ts";
import { loadWorkerConfig } from "../worker/config.ts";
import { startWorker, type Worker } from "../worker/worker.ts";

const WORKERS = 3;
const TIMEOUT_MS = 20_000;

function deadline<T>(promise: Promise<T>, what: string): Promise<T> {
  return Promise.race([
    promise,
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`demo: timed out waiting for ${what}`)), TIMEOUT_MS)
    ),
  ]);
}

async function list(base: string): Promise<WorkerListing> {
  return await (await fetch(`${base}/debug/list_workers`)).json();
}

async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  const end = Date.now() + TIMEOUT_MS;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`demo: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function table(listing: WorkerListing): string {
  const header = [
    "worker_id",
    "observed (ip:port)",
    "reported public ip",
    "udp endpoint (STUN)",
    "nat mapping",
    "connected",
  ];
  const rows = Object.entries(listing.workers).sort(([a], [b]) => a.localeCompare(b)).map((
    [id, w],
  ) => [
    id,
    `${w.websocket_observed_ip}:${w.websocket_observed_port}`,
    String(w.http_reported_public_ip),
    w.udp_endpoint?.public ? `${w.udp_endpoint.public.ip}:${w.udp_endpoint.public.port}` : "-",
    w.udp_endpoint?.nat_mapping ?? "-",
    String(w.websocket_connected),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

const echoListening = Promise.withResolvers<number>();
const echo = Deno.serve({
  port: 0,
  hostname: "127.0.0.1",
  onListen: ({ port }) => echoListening.resolve(port),
}, ipEchoHandler);
const echoUrl = `http://127.0.0.1:${await echoListening.promise}/`;
console.log(`IP echo stand-in (instead of api.ipify.org): ${echoUrl}`);

// Two STUN servers, as the worker needs to classify its NAT: one inside the
// rendezvous (STUN_PORT) and one standalone.
const secondStun = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
const service = startRendezvous(
  loadRendezvousConfig({ PORT: "0", HOST: "127.0.0.1", STUN_PORT: "0" }),
);
const workers: Worker[] = [];
/** Messages each worker received, by peer and path. */
const received = new Map<string, { peer: string; path: PathKind }[]>();
let exitCode = 0;
try {
  const listening = await deadline(service.addr, "the rendezvous");
  const base = `http://127.0.0.1:${listening.port}`;
  console.log(`rendezvous listening: ${base}  (list: ${base}/debug/list_workers)`);
  const stunServers = [service.stun!.addresses[0], secondStun.addresses[0]].map(formatAddress);
  console.log(`STUN servers: ${stunServers.join(", ")}`);

  for (let i = 1; i <= WORKERS; i++) {
    const id = `demo-worker-${i}`;
    const got: { peer: string; path: PathKind }[] = [];
    received.set(id, got);
    const config = loadWorkerConfig({
      RENDEZVOUS_SERVICE_URL: base,
      WORKER_ID: id,
      IP_ECHO_URL: echoUrl,
      UDP_HOST: "127.0.0.1",
      STUN_SERVERS: stunServers.join(","),
      PEER_AUTOCONNECT: "true",
      PEER_HELLO_SEC: "0.5",
    });
    workers.push(
      await startWorker(config, {
        health: false,
        onMessage: (peer, _payload, path) => got.push({ peer, path }),
      }),
    );
  }
  await until(async () => {
    const l = await list(base);
    return l.connected_workers_count === WORKERS &&
      Object.values(l.workers).every((w) =>
        w.http_reported_public_ip !== null && w.udp_endpoint !== null
      );
  }, "the workers to register");

  const listing = await list(base);
  console.log(`\n${listing.connected_workers_count} workers registered:\n`);
  console.log(table(listing));

  // Every worker connects to every other: relay at once, then a punched
  // direct path; wait until each pair is direct and has traded messages.
  const pairsDone = async () => {
    const l = await list(base);
    return Object.entries(l.workers).every(([id, w]) =>
      Object.keys(l.workers).every((peer) => peer === id || w.peer_paths[peer]?.path === "direct")
    ) &&
      [...received.values()].every((got) =>
        got.filter((m) => m.path === "direct").length >= 2 * (WORKERS - 1)
      );
  };
  await until(pairsDone, "every pair to go direct");
  const paths = await list(base);
  console.log("\npeer paths (each worker's own report, from the listing):\n");
  const rows = [["worker", "peer", "path", "rtt ms", "messages received (relay/direct)"]];
  for (const [id, w] of Object.entries(paths.workers).sort(([a], [b]) => a.localeCompare(b))) {
    for (const [peer, p] of Object.entries(w.peer_paths).sort(([a], [b]) => a.localeCompare(b))) {
      const got = received.get(id)!.filter((m) => m.peer === peer);
      const relay = got.filter((m) => m.path === "relay").length;
      rows.push([
        id,
        peer,
        p.path,
        String(p.rtt_ms ?? "-"),
        `${got.length} (${relay}/${got.length - relay})`,
      ]);
    }
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const [i, row] of rows.entries()) {
    console.log(row.map((c, j) => c.padEnd(widths[j])).join("  ").trimEnd());
    if (i === 0) console.log(widths.map((w) => "-".repeat(w)).join("  "));
  }

  console.log("\nstopping the workers ...");
  await deadline(Promise.all(workers.splice(0).map((w) => w.close())), "the workers to stop");
  await until(async () => (await list(base)).connected_workers_count === 0, "de-registration");
  console.log("every worker de-registered; stopping the rendezvous ...");
  await deadline(service.close(), "the rendezvous to stop");
  console.log("rendezvous stopped. Demo done.");
} catch (error) {
  console.error((error as Error).message);
  exitCode = 1;
} finally {
  await Promise.all(workers.map((w) => w.close()));
  await service.close();
  await echo.shutdown();
  await secondStun.close();
}
Deno.exit(exitCode);
