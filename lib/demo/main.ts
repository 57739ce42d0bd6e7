/**
 * `deno task demo`: a rendezvous and three workers, started in this process
 * through the public API (`startRendezvous`, `startWorker`), with a local IP
 * echo stand-in instead of api.ipify.org; prints the registry table and each
 * pair's path, sends a few megabytes over an encrypted stream from one
 * worker to another and prints the path and rate, then shuts down cleanly.
 * Nothing leaves loopback.
 *
 * @module
 */

import { formatTable } from "../core/table.ts";
import { ipEchoHandler } from "../rendezvous/ip_echo.ts";
import { loadRendezvousConfig } from "../rendezvous/config.ts";
import { startRendezvous } from "../rendezvous/service.ts";
import type { PathKind, WorkerListing } from "../protocol/messages.ts";
import { formatAddress } from "../stun/client.ts";
import { StunServer } from "../stun/server.ts";
import { loadWorkerConfig } from "../worker/config.ts";
import { startWorker, type Worker } from "../worker/worker.ts";
import type { PeerConnection } from "../peer/connection.ts";

const WORKERS = 3;
/** Bytes the demo sends over a stream, from the first worker to the second. */
const STREAM_BYTES = 8 * 1024 * 1024;

/** Answers each stream of `connection` with the number of bytes it carried. */
async function countStreams(connection: PeerConnection): Promise<void> {
  for await (const stream of connection.incomingStreams) {
    void (async () => {
      let n = 0;
      for await (const chunk of stream.readable) n += chunk.length;
      const writer = stream.writable.getWriter();
      await writer.write(new TextEncoder().encode(String(n)));
      await writer.close();
    })().catch(() => {});
  }
}
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
  return formatTable([header, ...rows], { rule: true });
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
        onConnection: (connection) => void countStreams(connection).catch(() => {}),
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
  console.log(formatTable(rows, { rule: true }));

  // The channel itself: a stream from the first worker to the second,
  // encrypted end to end, over the path the pair punched.
  const [from, to] = [workers[0], workers[1]];
  const connection = await deadline(from.connect(to.id), "a connection");
  const stream = await connection.openStream();
  const started = performance.now();
  const writer = stream.writable.getWriter();
  const chunk = new Uint8Array(64 * 1024);
  for (let sent = 0; sent < STREAM_BYTES; sent += chunk.length) await writer.write(chunk);
  await writer.close();
  const answer = await deadline(new Response(stream.readable).text(), "the stream's answer");
  const seconds = (performance.now() - started) / 1000;
  const mb = STREAM_BYTES / 1e6;
  console.log(
    `\nstream ${from.id} → ${to.id}: ${mb.toFixed(1)} MB over the ${
      from.peers.pathOf(to.id).path
    } path in ${(seconds * 1000).toFixed(0)} ms (${(mb / seconds).toFixed(1)} MB/s), ${
      answer === String(STREAM_BYTES) ? "all arrived" : `the peer counted ${answer} bytes`
    }`,
  );

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
