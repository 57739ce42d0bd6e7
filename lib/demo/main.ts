/**
 * `deno task demo`: a rendezvous and three workers on this machine, with a
 * local IP echo stand-in instead of api.ipify.org, then the registry table,
 * then a clean shutdown. Nothing leaves loopback.
 *
 * @module
 */

import { ipEchoHandler } from "../rendezvous/ip_echo.ts";
import type { WorkerListing } from "../protocol/messages.ts";
import { formatAddress } from "../stun/client.ts";
import { StunServer } from "../stun/server.ts";

const ROOT = new URL("../../", import.meta.url);
const WORKERS = 3;
const TIMEOUT_MS = 20_000;

interface Child {
  name: string;
  process: Deno.ChildProcess;
  /** Resolves with the first JSON log line whose message is `message`. */
  waitFor(message: string): Promise<Record<string, unknown>>;
  /** Every JSON log line so far. */
  lines: Record<string, unknown>[];
}

function spawn(name: string, file: string, env: Record<string, string>): Child {
  const sys = file === "worker.ts" ? ["--allow-sys=networkInterfaces"] : [];
  const process = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-env", ...sys, file],
    cwd: ROOT.pathname,
    env: { LOG_FORMAT: "json", ...env },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const seen: Record<string, unknown>[] = [];
  const waiters: { message: string; resolve: (l: Record<string, unknown>) => void }[] = [];
  (async () => {
    let buffer = "";
    for await (const chunk of process.stderr.pipeThrough(new TextDecoderStream())) {
      buffer += chunk;
      let index;
      while ((index = buffer.indexOf("\n")) >= 0) {
        const text = buffer.slice(0, index);
        buffer = buffer.slice(index + 1);
        let line: Record<string, unknown>;
        try {
          line = JSON.parse(text);
        } catch {
          console.error(`[${name}] ${text}`);
          continue;
        }
        seen.push(line);
        for (const waiter of waiters.filter((w) => w.message === line.message)) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.resolve(line);
        }
      }
    }
  })();
  return {
    name,
    process,
    lines: seen,
    waitFor(message) {
      const found = seen.find((l) => l.message === message);
      if (found) return Promise.resolve(found);
      return new Promise((resolve) => waiters.push({ message, resolve }));
    },
  };
}

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
// rendezvous (STUN_PORT) and one standalone, here in this process.
const secondStun = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
const rendezvous = spawn("rendezvous", "rendezvous.ts", {
  PORT: "0",
  HOST: "127.0.0.1",
  STUN_PORT: "0",
});
const children: Child[] = [rendezvous];
let exitCode = 0;
try {
  const listening = await deadline(rendezvous.waitFor("rendezvous listening"), "the rendezvous");
  const base = `http://127.0.0.1:${listening.port}`;
  console.log(`rendezvous listening: ${base}  (list: ${base}/debug/list_workers)`);
  const stunLine = await deadline(rendezvous.waitFor("stun server listening"), "its STUN server");
  const stunServers = [`127.0.0.1:${stunLine.port}`, formatAddress(secondStun.addresses[0])];
  console.log(`STUN servers: ${stunServers.join(", ")}`);

  for (let i = 1; i <= WORKERS; i++) {
    children.push(spawn(`worker-${i}`, "worker.ts", {
      RENDEZVOUS_SERVICE_URL: base,
      WORKER_ID: `demo-worker-${i}`,
      IP_ECHO_URL: echoUrl,
      PORT: "0",
      HOST: "127.0.0.1",
      STUN_SERVERS: stunServers.join(","),
      PEER_AUTOCONNECT: "true",
      PEER_HELLO_SEC: "0.5",
    }));
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
  const workers = children.slice(1);
  const pairsDone = async () => {
    const l = await list(base);
    return Object.entries(l.workers).every(([id, w]) =>
      Object.keys(l.workers).every((peer) => peer === id || w.peer_paths[peer]?.path === "direct")
    ) &&
      workers.every((child) =>
        child.lines.filter((line) =>
          line.message === "peer message received" && line.path === "direct"
        )
          .length >= 2 * (WORKERS - 1)
      );
  };
  await until(pairsDone, "every pair to go direct");
  const paths = await list(base);
  console.log("\npeer paths (each worker's own report, from the listing):\n");
  const rows = [["worker", "peer", "path", "rtt ms", "messages received (relay/direct)"]];
  for (const [id, w] of Object.entries(paths.workers).sort(([a], [b]) => a.localeCompare(b))) {
    const child = workers.find((c) => c.name === `worker-${id.split("-").at(-1)}`)!;
    for (const [peer, p] of Object.entries(w.peer_paths).sort(([a], [b]) => a.localeCompare(b))) {
      const got = child.lines.filter((l) =>
        l.message === "peer message received" && l.peer_id === peer
      );
      const relay = got.filter((l) => l.path === "relay").length;
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

  console.log("\nstopping the workers (SIGTERM) ...");
  for (const child of children.slice(1)) child.process.kill("SIGTERM");
  for (const child of children.slice(1)) await deadline(child.process.status, child.name);
  await until(async () => (await list(base)).connected_workers_count === 0, "de-registration");
  console.log("every worker de-registered; stopping the rendezvous ...");
  rendezvous.process.kill("SIGTERM");
  const status = await deadline(rendezvous.process.status, "the rendezvous to stop");
  console.log(`rendezvous exited with code ${status.code}. Demo done.`);
} catch (error) {
  console.error((error as Error).message);
  exitCode = 1;
} finally {
  for (const child of children) {
    try {
      child.process.kill("SIGKILL");
    } catch {
      // Already exited.
    }
  }
  await echo.shutdown();
  await secondStun.close();
}
Deno.exit(exitCode);
