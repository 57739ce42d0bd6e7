/**
 * The fleet over Redis (`deno task bench:fleet`, and `deno task bench`'s
 * `fleet` scenario): four rendezvous instances sharing one redis-server
 * behind haproxy, all on this machine. Measures, against the issue's targets:
 *
 *   registration — 8,000 workers through haproxy at 1,000/s offered, p50/p99,
 *                  and held (every instance lists all 8,000)
 *   listing      — `/debug/list_workers` of the whole fleet on one instance
 *   introduction — `connect` on one instance → `punch` at a peer on another
 *   relay        — binary relay frames between two instances, next to two
 *                  workers on one instance
 *   kill -9      — an instance holding ~2,000 workers killed: until every
 *                  survivor lists the whole fleet again
 *   redis        — memory per worker and CPU during the ramp
 *
 * Flags: `--workers N` (8000), `--rate R` (1000 registrations/s offered),
 * `--pairs N` (200 introductions), `--hold S` (30 s held before measuring on). Writes bench/results/fleet-*.json.
 *
 * @module
 */

import { type BenchRow, machineState, numberFlag, percentile, recordRow } from "./_common.ts";
import { LoadGen } from "./_loadgens.ts";
import { fleetUnavailable, TestFleet } from "../tests/_fleet.ts";
import { parseRedisUrl, RedisConnection, text } from "../lib/redis/client.ts";
import { encodeRelayFrame } from "../lib/protocol/relay_frame.ts";

const WORKERS = numberFlag("--workers", 8000);
const RATE = numberFlag("--rate", 1000);
const PAIRS = numberFlag("--pairs", 200);
const HOLD_S = numberFlag("--hold", 30);
const LOADGENS = 4;
const state = machineState();

const why = await fleetUnavailable();
if (why) {
  console.error(`fleet benchmark cannot run: ${why}`);
  Deno.exit(1);
}

const rows: BenchRow[] = [];
const record = (row: BenchRow) => recordRow(rows, row);
const pct = (xs: number[], p: number) => Number(percentile(xs, p).toFixed(1));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(check: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const start = performance.now();
  while (performance.now() - start < timeoutMs) {
    if (await check().catch(() => false)) return performance.now() - start;
    await sleep(100);
  }
  return NaN;
}
const stats = async (http: string) => await (await fetch(`${http}/debug/stats`)).json();

/** A WebSocket session straight to one instance, with a wait for a message type. */
class Direct {
  socket: WebSocket;
  #waiters = new Map<string, (m: Record<string, unknown>) => void>();
  binaryBytes = 0;
  firstBinaryAt = 0;
  lastBinaryAt = 0;
  constructor(port: number, id: string) {
    this.socket = new WebSocket(`ws://127.0.0.1:${port}/ws/register/${id}`);
    this.socket.binaryType = "arraybuffer";
    this.socket.onmessage = (e) => {
      if (typeof e.data !== "string") {
        this.binaryBytes += (e.data as ArrayBuffer).byteLength;
        this.lastBinaryAt = performance.now();
        if (this.firstBinaryAt === 0) this.firstBinaryAt = this.lastBinaryAt;
        return;
      }
      const m = JSON.parse(e.data);
      const waiter = this.#waiters.get(m.type);
      if (waiter) {
        this.#waiters.delete(m.type);
        waiter(m);
      }
    };
  }
  wait(type: string, timeoutMs = 10_000): Promise<Record<string, unknown>> {
    const { promise, resolve, reject } = Promise.withResolvers<Record<string, unknown>>();
    const timer = setTimeout(() => reject(new Error(`no ${type}`)), timeoutMs);
    this.#waiters.set(type, (m) => {
      clearTimeout(timer);
      resolve(m);
    });
    return promise;
  }
  static async open(port: number, id: string): Promise<Direct> {
    const d = new Direct(port, id);
    await d.wait("registered");
    return d;
  }
  close() {
    this.socket.close(1000);
  }
}

async function redisInfo(url: string): Promise<Record<string, number>> {
  const c = await RedisConnection.open({ url: parseRedisUrl(url) });
  try {
    const info = text(await c.command(["INFO"]))!;
    const out: Record<string, number> = {};
    for (const line of info.split("\r\n")) {
      const [k, v] = line.split(":");
      if (v !== undefined && /^[\d.]+$/.test(v)) out[k] = Number(v);
    }
    return out;
  } finally {
    c.close();
  }
}

const fleet = await TestFleet.start(4, {
  MAX_CONNECTIONS: "5000",
  FLEET_TTL_SEC: "5",
});
const [first, second] = fleet.instances;
const directs: Direct[] = [];
const gens: LoadGen[] = [];
try {
  console.error(`fleet: 4 instances, redis on ${fleet.redis.port}, haproxy on ${fleet.front.port}`);
  const before = await redisInfo(fleet.redis.url());

  // ---- registration: ramp through haproxy ----------------------------------
  const rampStart = performance.now();
  for (let i = 0; i < LOADGENS; i++) {
    gens.push(
      new LoadGen({
        port: fleet.front.port,
        count: Math.floor(WORKERS / LOADGENS) + (i < WORKERS % LOADGENS ? 1 : 0),
        rate: RATE / LOADGENS,
        prefix: `f${i}`,
        addresses: 1,
        reconnect: true,
      }),
    );
  }
  const everywhere = async (count: number, instances = fleet.instances) =>
    (await Promise.all(instances.map(async (r) => (await stats(r.http)).registered))).every((n) =>
      n === count
    );
  const heldMs = await until(() => everywhere(WORKERS), 120_000);
  const rampSeconds = (performance.now() - rampStart) / 1000;
  const after = await redisInfo(fleet.redis.url());
  await Promise.all(gens.map((g) => g.command("report")));
  const reports = await Promise.all(gens.map((g) => g.next("registration")));
  const latencies = reports.flatMap((r) => r.latencies as number[]);
  const failures = reports.reduce((n, r) => n + (r.failures as number), 0);
  const sessions = await Promise.all(
    fleet.instances.map(async (r) => (await stats(r.http)).sessions),
  );
  record({
    metric: `workers registered through haproxy (sessions per instance ${sessions.join("/")})`,
    value: Number.isNaN(heldMs) ? "not all" : sessions.reduce((a, b) => a + b, 0),
    target: `${WORKERS}, listed on every instance`,
    met: !Number.isNaN(heldMs),
  });
  record({
    metric: `registration p50 / p99 at ${RATE}/s offered (ms; ${failures} failed)`,
    value: `${pct(latencies, 0.5)} / ${pct(latencies, 0.99)}`,
    target: "p99 ≤ 100",
    met: pct(latencies, 0.99) <= 100,
  });
  record({
    metric: "ramp: first connection → every instance lists all (s)",
    value: Number(rampSeconds.toFixed(1)),
  });
  const memoryPerWorker = (after.used_memory - before.used_memory) / WORKERS;
  const cpu = (after.used_cpu_sys + after.used_cpu_user) -
    (before.used_cpu_sys + before.used_cpu_user);
  record({
    metric: "redis memory per worker (bytes, used_memory)",
    value: Math.round(memoryPerWorker),
  });
  record({
    metric: "redis CPU during the ramp (s, and ms per 1,000 registrations)",
    value: `${cpu.toFixed(2)} (${(cpu * 1e6 / WORKERS).toFixed(0)})`,
  });

  // ---- held ----------------------------------------------------------------------
  await sleep(HOLD_S * 1000);
  const progress = await Promise.all(gens.map((g) => g.next("progress")));
  const drops = progress.reduce((n, p) => n + (p.drops as number), 0);
  const stillHeld = await everywhere(WORKERS);
  record({
    metric: `held ${HOLD_S} s (server pings on): sessions dropped, all still listed everywhere`,
    value: `${drops}, ${stillHeld ? "yes" : "no"}`,
    target: "0, yes",
    met: drops === 0 && stillHeld,
  });

  // ---- listing -----------------------------------------------------------------
  const listMs: number[] = [];
  let listed = 0;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    const body = await (await fetch(`${first.http}/debug/list_workers`)).json();
    listMs.push(performance.now() - t0);
    listed = body.connected_workers_count;
  }
  record({
    metric: `full listing of ${listed} on one instance, median / max of 5 (ms)`,
    value: `${pct(listMs, 0.5)} / ${pct(listMs, 1)}`,
    target: "≤ 300",
    met: pct(listMs, 0.5) <= 300 && listed === WORKERS,
  });

  // ---- introductions across instances ------------------------------------------
  const pairs: [Direct, Direct][] = [];
  for (let i = 0; i < PAIRS; i++) {
    const a = await Direct.open(first.port, `ia${i}`);
    const b = await Direct.open(second.port, `ib${i}`);
    directs.push(a, b);
    pairs.push([a, b]);
  }
  await until(() => everywhere(WORKERS + 2 * PAIRS, [first, second]), 30_000);
  const introMs: number[] = [];
  for (const [i, [a, b]] of pairs.entries()) {
    const punched = b.wait("punch");
    const t0 = performance.now();
    a.socket.send(JSON.stringify({ type: "connect", peer_id: `ib${i}` }));
    await punched;
    introMs.push(performance.now() - t0);
    await sleep(10); // 100 introductions a second, offered
  }
  record({
    metric: `introduction across instances: connect → peer's punch, p50 / p99 of ${PAIRS} (ms)`,
    value: `${pct(introMs, 0.5)} / ${pct(introMs, 0.99)}`,
    target: "p99 ≤ 20",
    met: pct(introMs, 0.99) <= 20,
  });

  // ---- relay throughput --------------------------------------------------------
  /** Delivered throughput (first to last byte, backlog drained) and the share delivered. */
  const relay = async (from: Direct, to: Direct, toId: string) => {
    const frame = encodeRelayFrame(toId, new Uint8Array(1200));
    to.binaryBytes = to.firstBinaryAt = to.lastBinaryAt = 0;
    let sent = 0;
    const end = performance.now() + 3000;
    while (performance.now() < end) {
      if (from.socket.bufferedAmount < 256 * 1024) {
        for (let i = 0; i < 64; i++) from.socket.send(frame);
        sent += 64 * frame.length;
      }
      await sleep(1);
    }
    // Until nothing more arrives for half a second: what is queued is delivered or lost.
    while (to.lastBinaryAt === 0 || performance.now() - to.lastBinaryAt < 500) await sleep(50);
    const seconds = (to.lastBinaryAt - to.firstBinaryAt) / 1000;
    return { mbps: to.binaryBytes / seconds / 1e6, delivered: to.binaryBytes / sent };
  };
  const x = await Direct.open(first.port, "rx");
  const y = await Direct.open(second.port, "ry");
  const z = await Direct.open(first.port, "rz");
  directs.push(x, y, z);
  await until(() => everywhere(WORKERS + 2 * PAIRS + 3, [first, second]), 30_000);
  const across = await relay(x, y, "ry");
  const within = await relay(x, z, "rz");
  const pairStats = await Promise.all([first, second].map((r) => stats(r.http)));
  const outages = pairStats.reduce((n, s) => n + s.fleet.redis_outages, 0);
  const dropped = pairStats.map((s) => s.peers.packetsDropped).join(" / ");
  record({
    metric:
      `binary relay of 3 s of 1,200-byte packets, across instances / within one: MB/s (delivered %; Redis outages ${outages}; dropped at a full send buffer or budget, per instance: ${dropped})`,
    value: `${across.mbps.toFixed(1)} (${(100 * across.delivered).toFixed(0)}) / ${
      within.mbps.toFixed(1)
    } (${(100 * within.delivered).toFixed(0)})`,
  });

  // ---- kill -9 -------------------------------------------------------------------
  const victim = fleet.instances[3];
  const held = (await stats(victim.http)).sessions;
  const killedAt = performance.now();
  await victim.proc.stop("SIGKILL");
  const survivors = fleet.instances.slice(0, 3);
  const total = WORKERS + 2 * PAIRS + 3;
  const wholeMs = await until(async () => {
    const s = await Promise.all(survivors.map((r) => stats(r.http)));
    return s.reduce((n, x) => n + x.sessions, 0) === total &&
      s.every((x) => x.registered === total);
  }, 60_000);
  record({
    metric: `kill -9 of an instance with ${held} workers: fleet whole again on the survivors (ms)`,
    value: Number.isNaN(wholeMs) ? "not within 60 s" : Math.round(performance.now() - killedAt),
    target: "≤ 10,000",
    met: !Number.isNaN(wholeMs) && performance.now() - killedAt <= 10_000,
  });
} finally {
  for (const d of directs) d.close();
  await Promise.all(gens.map((g) => g.stop()));
  await fleet.close();
}

const machine = {
  ...state,
  loadavg_after: Deno.loadavg(),
  workers: WORKERS,
  note: "4 instances, redis, haproxy, load generators and this process share the cores",
};
console.log(
  `\nfleet benchmark (${machine.cores} cores, Deno ${machine.deno}, ${machine.date}, load before ${
    machine.loadavg_before.map((l) => l.toFixed(2)).join(" ")
  })\n`,
);
for (const r of rows) {
  const mark = r.met === undefined ? "" : r.met ? " ✓" : " ✗";
  console.log(`${r.metric.padEnd(92)} ${String(r.value).padEnd(16)} ${r.target ?? ""}${mark}`);
}
await Deno.mkdir(new URL("results/", import.meta.url), { recursive: true });
const file = new URL(`results/fleet-${machine.date.replace(/[:.]/g, "-")}.json`, import.meta.url);
await Deno.writeTextFile(file, JSON.stringify({ machine, rows }, null, 2) + "\n");
console.log(`\nwrote ${file.pathname}`);
