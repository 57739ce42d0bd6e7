/**
 * The benchmark suite (`deno task bench`): a rendezvous process under load
 * from several load-generator processes (bench/_loadgen.ts), everything on
 * loopback, on this machine's cores. Scenarios:
 *
 *   cold start  — process start to `/ready`
 *   fleet       — ramp to N workers at an offered registration rate, memory
 *                 per worker (RSS slope 1k → 10k), hold through an idle period
 *                 with server pings on, the list endpoint at N while echoes flow
 *   storm       — every worker reconnects at once after a restart (the
 *                 worker's own backoff), time until the registry is whole
 *   crash       — the same after kill -9 of a rendezvous holding healthy
 *                 sessions, restarted 5 s later
 *   round trips — echo at a fixed offered rate across many workers
 *   relay       — relayed frames per second between two workers
 *   stun        — bench/stun_bench.ts (ours next to coturn)
 *   redis       — bench/fleet_bench.ts: four instances over Redis, behind haproxy
 *   abuse       — bench/abuse_bench.ts: clients that never read, relay to one,
 *                 token guesses, huge frames, beside a healthy worker
 *
 * Flags: `--workers N` (19000), `--idle S` (60), `--storm N` (10000),
 * `--loadgens N` (4), `--quick` (small numbers, for a smoke test), `--only a,b` (scenarios:
 * cold,memory,fleet,rates,storm,crash,rtt,relay,stun,redis,abuse). Prints a table; writes
 * bench/results/bench-*.json.
 *
 * @module
 */

import { type BenchRow, numberFlag, percentile, recordRow } from "./_common.ts";
import { LoadGen } from "./_loadgens.ts";

const ROOT = new URL("../", import.meta.url);
const args = Deno.args;
const flag = numberFlag;
const quick = args.includes("--quick");
const onlyAt = args.indexOf("--only");
const only = onlyAt >= 0 ? args[onlyAt + 1].split(",") : undefined;
const run = (scenario: string) => only === undefined || only.includes(scenario);
const WORKERS = flag("--workers", quick ? 400 : 19_000);
const IDLE_S = flag("--idle", quick ? 2 : 60);
const STORM = flag("--storm", quick ? 300 : 10_000);
const RTT_WORKERS = quick ? 100 : 1000;
const RTT_RATE = 10; // per worker per second: 10,000/s at 1,000 workers
const RTT_SECONDS = quick ? 2 : 10;
const LOADGENS = quick ? 2 : Number(flag("--loadgens", 4));
const REGISTRATION_RATE = 2000;
const ADDRESSES = 4;

type Row = BenchRow & { scenario: string };
const rows: Row[] = [];
const record = (row: Row) => recordRow(rows, row);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (xs: number[], p: number) => Number(percentile(xs, p).toFixed(2));

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

interface Server {
  child: Deno.ChildProcess;
  port: number;
  base: string;
}

function startRendezvous(
  port: number,
  env: Record<string, string> = {},
  script = "rendezvous.ts",
): Server {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-env", script],
    cwd: ROOT.pathname,
    env: {
      PORT: String(port),
      HOST: "0.0.0.0",
      // Under the 20,000 open files of a process, with room for accepts in flight.
      MAX_CONNECTIONS: "19500",
      LOG_FORMAT: "json",
      ...env,
    },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  return { child, port, base: `http://127.0.0.1:${port}` };
}

async function waitReady(server: Server, timeoutMs = 10_000): Promise<number> {
  const start = performance.now();
  while (performance.now() - start < timeoutMs) {
    try {
      const r = await fetch(`${server.base}/ready`);
      await r.body?.cancel();
      if (r.ok) return performance.now() - start;
    } catch {
      // Not listening yet.
    }
    await sleep(1);
  }
  throw new Error("rendezvous did not become ready");
}

async function stats(
  server: Server,
): Promise<{ sessions: number; registered: number; memory: { rss: number; heap_used: number } }> {
  return await (await fetch(`${server.base}/debug/stats`)).json();
}

async function stop(server: Server): Promise<void> {
  try {
    server.child.kill("SIGTERM");
  } catch {
    // Gone.
  }
  await server.child.status;
}

function loadgens(
  port: number,
  total: number,
  rate: number,
  prefix: string,
  reconnect = false,
): LoadGen[] {
  return Array.from({ length: LOADGENS }, (_, i) =>
    new LoadGen({
      port,
      count: Math.floor(total / LOADGENS) + (i < total % LOADGENS ? 1 : 0),
      rate: rate / LOADGENS,
      prefix: `${prefix}${i}`,
      addresses: ADDRESSES,
      reconnect,
    }));
}

async function until(
  check: () => Promise<boolean>,
  timeoutMs: number,
  everyMs = 100,
): Promise<number> {
  const start = performance.now();
  while (performance.now() - start < timeoutMs) {
    if (await check()) return performance.now() - start;
    await sleep(everyMs);
  }
  return NaN;
}

// ---- cold start ---------------------------------------------------------------

if (run("cold")) {
  const samples: number[] = [];
  for (let i = 0; i < 5; i++) {
    const server = startRendezvous(freePort());
    samples.push(await waitReady(server));
    await stop(server);
  }
  const median = pct(samples, 0.5);
  record({
    scenario: "cold start",
    metric: "process start → /ready, median of 5 (ms)",
    value: median,
    target: "≤ 150",
    met: median <= 150,
  });
}

// ---- memory per idle worker ----------------------------------------------------

async function memoryPerWorker(script: string, label: string): Promise<void> {
  // RSS at 1,000 and at 10,000 idle workers, each after the ramp settled
  // (garbage from registering collected), so the slope is what a worker costs.
  const server = startRendezvous(freePort(), {}, script);
  await waitReady(server);
  const small = Math.min(1000, Math.floor(WORKERS / 10));
  const large = Math.min(10_000, WORKERS);
  const settled = async (count: number) => {
    await until(async () => (await stats(server)).registered >= count, 120_000, 50);
    await sleep(3000); // settle: the ramp's garbage gets collected
    return (await stats(server)).memory;
  };
  const first = loadgens(server.port, small, REGISTRATION_RATE, "m");
  const at1 = await settled(small);
  const second = loadgens(server.port, large - small, REGISTRATION_RATE, "n");
  const at10 = await settled(large);
  const perWorker = (at10.rss - at1.rss) / (large - small) / 1024;
  const heapPerWorker = (at10.heap_used - at1.heap_used) / (large - small) / 1024;
  const ours = script === "rendezvous.ts";
  record({
    scenario: "memory",
    metric: `${label}: RSS per idle worker, slope ${small}→${large} (KB)`,
    value: Number(perWorker.toFixed(1)),
    target: ours ? "≤ 20" : undefined,
    met: ours ? perWorker <= 20 : undefined,
  });
  record({
    scenario: "memory",
    metric: `${label}: of which JS heap (KB)`,
    value: Number(heapPerWorker.toFixed(1)),
  });
  await Promise.all([...first, ...second].map((g) => g.stop()));
  await stop(server);
}

if (run("memory")) {
  await memoryPerWorker("bench/_bare_server.ts", "bare Deno WebSocket server");
  await memoryPerWorker("rendezvous.ts", "rendezvous");
}

// ---- fleet: registration, hold, list --------------------------------------------

if (run("fleet")) {
  const server = startRendezvous(freePort(), { IDLE_TIMEOUT_SEC: "30" });
  await waitReady(server);
  const gens = loadgens(server.port, WORKERS, REGISTRATION_RATE, "w");
  const started = performance.now();
  const rampMs = await until(async () => (await stats(server)).registered >= WORKERS, 180_000, 200);
  const whole = (await stats(server)).registered;
  record({
    scenario: "fleet",
    metric: `workers registered (offered ${REGISTRATION_RATE}/s)`,
    value: whole,
    target: `${WORKERS}`,
    met: whole === WORKERS,
  });
  record({
    scenario: "fleet",
    metric: "achieved registration rate (/s)",
    value: Math.round(whole / ((performance.now() - started) / 1000)),
  });
  void rampMs;
  const latencies: number[] = [];
  for (const g of gens) {
    await g.command("report");
    latencies.push(...((await g.next("registration")).latencies as number[]));
  }
  const p99 = pct(latencies, 0.99);
  record({
    scenario: "fleet",
    metric: "registration: connect → listed with IP, p50 (ms)",
    value: pct(latencies, 0.5),
  });
  record({
    scenario: "fleet",
    metric: "registration: connect → listed with IP, p99 (ms)",
    value: p99,
    target: "≤ 50",
    met: p99 <= 50,
  });
  // Idle with server pings on (IDLE_TIMEOUT_SEC=30: a ping after 15 s of silence).
  await sleep(IDLE_S * 1000); // the idle period is the experiment
  const drops = gens.reduce((n, g) => n + Number(g.last("progress")?.drops ?? 0), 0);
  const after = (await stats(server)).registered;
  record({
    scenario: "fleet",
    metric: `dropped during ${IDLE_S} s idle`,
    value: drops,
    target: "0",
    met: drops === 0 && after === WORKERS,
  });
  // The list endpoint at full size. A light echo probe (about 200/s) runs
  // first alone, then while the listing is fetched back to back: the
  // difference is what listing costs everyone else.
  const probeRate = (200 / (WORKERS / LOADGENS)).toFixed(4);
  await gens[0].command(`echo ${probeRate} 3`);
  const quiet = await gens[0].next("echo");
  await gens[0].command(`echo ${probeRate} 3`);
  const listTimes: number[] = [];
  const listUntil = performance.now() + 3000;
  while (performance.now() < listUntil) {
    // Time to the last byte; the orchestrator's own JSON parse is not the server's time.
    const t = performance.now();
    const text = await (await fetch(`${server.base}/debug/list_workers`)).text();
    listTimes.push(performance.now() - t);
    if (!text.startsWith(`{"connected_workers_count":${WORKERS},`)) listTimes.push(Infinity);
  }
  const busy = await gens[0].next("echo");
  const listP50 = pct(listTimes, 0.5);
  record({
    scenario: "fleet",
    metric: `GET /debug/list_workers at ${WORKERS}, median of ${listTimes.length} (ms)`,
    value: listP50,
    target: "≤ 100",
    met: listP50 <= 100,
  });
  record({
    scenario: "fleet",
    metric: "  … slowest of them (ms)",
    value: Number(Math.max(...listTimes).toFixed(1)),
  });
  record({
    scenario: "fleet",
    metric: "echo p99 without / with back-to-back listings (ms)",
    value: `${Number(quiet.p99).toFixed(1)} / ${Number(busy.p99).toFixed(1)}`,
  });
  await Promise.all(gens.map((g) => g.stop()));
  await stop(server);
}

// ---- registration rates ------------------------------------------------------------

if (run("rates")) {
  // The highest offered rate sustained with zero failures: fresh server per
  // rate, 5 s of registrations each.
  for (const rate of quick ? [500] : [2000, 3000, 3800]) {
    const server = startRendezvous(freePort());
    await waitReady(server);
    const count = rate * 5;
    const gens = loadgens(server.port, count, rate, `q${rate}-`);
    const started = performance.now();
    await until(async () => (await stats(server)).registered >= count, 60_000, 100);
    const seconds = (performance.now() - started) / 1000;
    const latencies: number[] = [];
    let failures = 0;
    for (const g of gens) {
      await g.command("report");
      const r = await g.next("registration");
      latencies.push(...(r.latencies as number[]));
      failures += Number(r.failures);
    }
    record({
      scenario: "rates",
      metric: `offered ${rate}/s: achieved /s, failures, p50 / p99 ms`,
      value: `${Math.round(latencies.length / seconds)}, ${failures}, ${pct(latencies, 0.5)} / ${
        pct(latencies, 0.99)
      }`,
    });
    await Promise.all(gens.map((g) => g.stop()));
    await stop(server);
  }
}

// ---- reconnect storm -------------------------------------------------------------

if (run("storm")) {
  const port = freePort();
  let server = startRendezvous(port);
  await waitReady(server);
  const gens = loadgens(port, STORM, 4000, "s", true);
  await until(async () => (await stats(server)).registered >= STORM, 120_000, 200);
  const killedAt = performance.now();
  await stop(server); // SIGTERM: 1001 to every worker, as a deploy does
  const downMs = performance.now() - killedAt;
  server = startRendezvous(port);
  await waitReady(server);
  record({
    scenario: "storm",
    metric: "old process: SIGTERM → exit (ms)",
    value: Math.round(downMs),
  });
  const wholeMs = await until(async () => (await stats(server)).registered >= STORM, 60_000, 50);
  record({
    scenario: "storm",
    metric: `${STORM} workers back after a restart (ms from /ready)`,
    value: Math.round(wholeMs),
    target: "≤ 10000",
    met: wholeMs <= 10_000,
  });
  await Promise.all(gens.map((g) => g.stop()));
  await stop(server);
}

// ---- crash: kill -9, back after 5 s ------------------------------------------------

if (run("crash")) {
  const port = freePort();
  let server = startRendezvous(port);
  await waitReady(server);
  const gens = loadgens(port, STORM, 4000, "c", true);
  await until(async () => (await stats(server)).registered >= STORM, 120_000, 200);
  // Healthy sessions (the worker's policy counts ≥ 10 s as healthy).
  await sleep(11_000);
  await Promise.all(gens.map((g) => g.command("report")));
  await Promise.all(gens.map((g) => g.next("registration")));
  server.child.kill("SIGKILL");
  await server.child.status;
  await sleep(5000);
  server = startRendezvous(port);
  await waitReady(server);
  const wholeMs = await until(async () => (await stats(server)).registered >= STORM, 60_000, 50);
  await Promise.all(gens.map((g) => g.command("report")));
  const herd = (await Promise.all(gens.map((g) => g.next("registration"))))
    .flatMap((r) => r.latencies as number[]);
  record({
    scenario: "crash",
    metric: `${STORM} workers back after kill -9 and 5 s down (ms from /ready)`,
    value: Math.round(wholeMs),
    target: "≤ 10000",
    met: wholeMs <= 10_000,
  });
  record({
    scenario: "crash",
    metric: "registration during the herd, p50 / p99 (ms, connect attempt → listed)",
    value: `${pct(herd, 0.5)} / ${pct(herd, 0.99)}`,
  });
  await Promise.all(gens.map((g) => g.stop()));
  await stop(server);
}

// ---- round trips ---------------------------------------------------------------

if (run("rtt")) {
  const server = startRendezvous(freePort());
  await waitReady(server);
  const gens = loadgens(server.port, RTT_WORKERS, 2000, "r");
  await until(async () => (await stats(server)).registered >= RTT_WORKERS, 60_000, 50);
  for (const g of gens) await g.command(`echo ${RTT_RATE} ${RTT_SECONDS}`);
  const results = await Promise.all(gens.map((g) => g.next("echo")));
  const p99 = Math.max(...results.map((r) => Number(r.p99)));
  const answered = results.reduce((n, r) => n + Number(r.answered), 0);
  record({
    scenario: "round trips",
    metric: `offered ${RTT_WORKERS * RTT_RATE}/s across ${RTT_WORKERS} workers: answered/s`,
    value: Math.round(answered / RTT_SECONDS),
  });
  record({
    scenario: "round trips",
    metric: "p99 (ms, worst generator)",
    value: p99,
    target: "≤ 10",
    met: p99 <= 10,
  });
  await Promise.all(gens.map((g) => g.stop()));
  await stop(server);
}

// ---- relay throughput -------------------------------------------------------------

if (run("relay")) {
  const server = startRendezvous(freePort(), {
    RELAY_RATE_PER_SEC: "1000000",
    RELAY_BURST: "1000000",
  });
  await waitReady(server);
  const connect = (id: string) =>
    new Promise<WebSocket>((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${server.port}/ws/register/${id}`);
      ws.onmessage = (e) => {
        if (String(e.data).includes('"registered"')) resolve(ws);
      };
    });
  const [a, b] = await Promise.all([connect("relay-a"), connect("relay-b")]);
  let received = 0;
  b.onmessage = () => received++;
  const data = btoa(String.fromCharCode(...new Uint8Array(1024)));
  const frame = JSON.stringify({ type: "relay", to: "relay-b", data });
  const seconds = quick ? 1 : 5;
  const end = performance.now() + seconds * 1000;
  let sent = 0;
  while (performance.now() < end) {
    if (a.bufferedAmount < 1 << 20) {
      for (let i = 0; i < 64; i++) a.send(frame);
      sent += 64;
    }
    await sleep(0);
  }
  await until(() => Promise.resolve(received >= sent), 10_000, 20);
  record({
    scenario: "relay",
    metric: "1 KiB frames relayed per second (one pair)",
    value: Math.round(received / seconds),
  });
  record({
    scenario: "relay",
    metric: "relay throughput (MB/s of payload)",
    value: Number(((received * 1024) / seconds / 1e6).toFixed(1)),
  });
  a.close();
  b.close();
  await stop(server);
}

// ---- benchmarks of their own: STUN, and the fleet over Redis -------------------------

/** Runs `deno task <task>`, prints its table, and records where the figures are. */
async function subBench(task: string, scenario: string, metric: string, file: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", task],
    cwd: ROOT.pathname,
    stdout: "piped",
    stderr: "inherit",
  }).output();
  console.error(new TextDecoder().decode(out.stdout));
  record({ scenario, metric, value: file });
}

if (!quick && run("stun")) {
  await subBench(
    "bench:stun",
    "stun",
    "see table above (ours next to coturn)",
    "bench/stun_bench.ts",
  );
}
if (!quick && run("abuse")) {
  await subBench(
    "bench:abuse",
    "abuse",
    "see table above (attacks beside a healthy worker)",
    "bench/abuse_bench.ts",
  );
}
if (!quick && run("redis")) {
  await subBench(
    "bench:fleet",
    "redis fleet",
    "see table above (4 instances, redis, haproxy)",
    "bench/fleet_bench.ts",
  );
}

// ---- report ----------------------------------------------------------------------

const machine = {
  cores: navigator.hardwareConcurrency,
  loadavg_after: Deno.loadavg(),
  deno: Deno.version.deno,
  date: new Date().toISOString(),
  workers: WORKERS,
  note: "rendezvous, load generators and this process share the cores",
};
const widths = [12, 58, 14, 10];
console.log(
  `\nholepunch benchmark (${machine.cores} cores, Deno ${machine.deno}, ${machine.date})\n`,
);
for (
  const r of [
    { scenario: "scenario", metric: "metric", value: "value", target: "target" } as Row,
    ...rows,
  ]
) {
  const cells = [r.scenario, r.metric, String(r.value), r.target ?? ""];
  const mark = r.met === undefined ? "" : r.met ? " ✓" : " ✗";
  console.log(cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd() + mark);
}
await Deno.mkdir(new URL("bench/results/", ROOT), { recursive: true });
const file = new URL(`bench/results/bench-${machine.date.replace(/[:.]/g, "-")}.json`, ROOT);
await Deno.writeTextFile(file, JSON.stringify({ machine, rows }, null, 2) + "\n");
console.log(`\nwrote ${file.pathname}`);
