/**
 * The channel as a user meets it (`deno task bench:forward`): two worker
 * processes on loopback (local STUN, so the path is direct), a file server
 * behind one (`PEER_EXPOSE`), curl fetching from the other's `PEER_FORWARD`
 * port — one connection, then four at once. Prints MB/s and the CPU seconds
 * per GB of both workers (from /proc), for `--io auto|ffi|deno`
 * (`PEER_UDP_IO`), beside Deno's bare QUIC measured in the same run.
 * Flags: `--mb N` (default 256), `--io`, `--runs N` (default 2).
 *
 * @module
 */

import { StunServer } from "../lib/stun/server.ts";
import { formatAddress } from "../lib/stun/client.ts";
import { machineState, median, numberFlag, stringFlag } from "./_common.ts";
import { spawnRendezvous, spawnWorker } from "../tests/_helpers.ts";
import { freeTcpPort } from "../tests/_redis.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const MB = numberFlag("--mb", 256);
const RUNS = numberFlag("--runs", 2);
const IO = stringFlag("--io", "auto");

/** CPU seconds (user + system) of a process so far, from /proc. */
function cpuOf(pid: number): number {
  const fields = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

async function curl(port: number, bytes: number): Promise<void> {
  const out = await new Deno.Command("curl", {
    args: ["-s", "-o", "/dev/null", "-w", "%{size_download}", `http://127.0.0.1:${port}/${bytes}`],
  }).output();
  const got = Number(new TextDecoder().decode(out.stdout));
  if (got !== bytes) throw new Error(`curl fetched ${got} bytes of ${bytes}`);
}

const machine = machineState(new Date());
console.error(
  `forward benchmark: ${MB} MB, ${RUNS} runs, udp io ${IO}; load ${
    machine.loadavg_before.join(" ")
  }`,
);

// The file server: GET /N answers N bytes.
const chunk = new Uint8Array(1 << 20);
const files = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
  let left = Number(new URL(req.url).pathname.slice(1));
  return new Response(
    new ReadableStream({
      pull(c) {
        if (left <= 0) return c.close();
        const n = Math.min(left, chunk.length);
        c.enqueue(chunk.subarray(0, n));
        left -= n;
      },
    }),
    { headers: { "content-length": String(left) } },
  );
});
const filePort = files.addr.port;
const stunA = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
const stunB = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
const stun = [stunA, stunB].map((s) => formatAddress(s.addresses[0])).join(",");
const rendezvous = await spawnRendezvous({ STUN_PORT: "0" });
const forwardPort = freeTcpPort();
const common = {
  STUN_SERVERS: stun,
  UDP_HOST: "127.0.0.1",
  PEER_UDP_IO: IO,
};
const server = spawnWorker(rendezvous.http, {
  ...common,
  WORKER_ID: "files",
  PEER_EXPOSE: String(filePort),
});
const client = spawnWorker(rendezvous.http, {
  ...common,
  WORKER_ID: "fetch",
  PEER_FORWARD: `127.0.0.1:${forwardPort}:files:${filePort}`,
});
await Promise.all([
  server.waitForLog("registered with rendezvous"),
  client.waitForLog("registered with rendezvous"),
]);
// A first small fetch: the connection is up, and the direct path, before the clock starts.
await curl(forwardPort, 1 << 20);
await client.waitForLog("peer path direct", () => true, 15_000);

/** Deno's bare QUIC between two processes, one stream of `bytes`: MB/s and CPU s/GB of both. */
async function floorQuic(bytes: number): Promise<{ mb_s: number; cpu_s_per_gb: number }> {
  const file = await Deno.makeTempFile();
  await Deno.remove(file);
  const run = (args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "bench/_quic_floor.ts", ...args],
      cwd: ROOT,
      stdout: "piped",
      stderr: "null",
    }).output();
  const server = run(["quic-server", file]);
  while (true) {
    try {
      if ((await Deno.readTextFile(file)).length > 0) break;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 20));
  }
  const last = (out: Deno.CommandOutput) =>
    JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!);
  const client = last(await run(["quic-client", file, String(bytes)]));
  const served = last(await server);
  await Deno.remove(file);
  return {
    mb_s: Number(client.mb_per_s.toFixed(1)),
    cpu_s_per_gb: Number(((client.cpu_s + served.cpu_s) / (bytes / 1e9)).toFixed(1)),
  };
}

const bytes = MB * 1e6;
const rows: Record<string, unknown>[] = [];
const floors = [];
for (let run = 0; run < RUNS; run++) floors.push(await floorQuic(bytes));
console.error(JSON.stringify({ bare_quic: floors }));
for (const parallel of [1, 4]) {
  const mbps: number[] = [];
  const cpu: number[] = [];
  for (let run = 0; run < RUNS; run++) {
    const cpu0 = cpuOf(server.child.pid) + cpuOf(client.child.pid);
    const t0 = performance.now();
    await Promise.all(Array.from({ length: parallel }, () => curl(forwardPort, bytes / parallel)));
    const secs = (performance.now() - t0) / 1000;
    mbps.push(Number((bytes / secs / 1e6).toFixed(1)));
    cpu.push(
      Number(
        ((cpuOf(server.child.pid) + cpuOf(client.child.pid) - cpu0) / (bytes / 1e9)).toFixed(1),
      ),
    );
  }
  const row = {
    connections: parallel,
    mb_s: mbps,
    median_mb_s: Number(median(mbps).toFixed(1)),
    cpu_s_per_gb: cpu,
  };
  console.error(JSON.stringify(row));
  rows.push(row);
}
await Promise.all([server, client, rendezvous.proc].map((p) => p.stop("SIGTERM")));
await files.shutdown();
stunA.close();
stunB.close();
const floorCpu = Number(median(floors.map((f) => f.cpu_s_per_gb)).toFixed(1));
const floorMbps = Number(median(floors.map((f) => f.mb_s)).toFixed(1));
for (const row of rows) {
  const r = row as { median_mb_s: number; cpu_s_per_gb: number[] };
  console.error(
    `${row.connections} connection(s): ${r.median_mb_s} MB/s (${
      (r.median_mb_s / floorMbps * 100).toFixed(1)
    } % of bare QUIC's ${floorMbps}), CPU ${median(r.cpu_s_per_gb).toFixed(1)} s/GB (${
      (median(r.cpu_s_per_gb) / floorCpu).toFixed(1)
    }× bare QUIC's ${floorCpu})`,
  );
}
console.log(JSON.stringify({ machine, mb: MB, io: IO, bare_quic: floors, rows }, null, 2));
