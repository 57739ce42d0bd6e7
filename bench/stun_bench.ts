/**
 * STUN server benchmark: our server (stun.ts) next to coturn's turnserver,
 * each in its own process on loopback, under the same load from this
 * process: Binding requests at fixed offered rates, then a closed loop with
 * a fixed window of requests in flight. Reports responses per second, loss
 * and latency percentiles; writes a JSON file to bench/results/.
 *
 * Run: `deno task bench:stun` (needs coturn for the comparison; without it
 * only our server is measured).
 *
 * @module
 */

import { freeTurnPort, turnserverArgs } from "../tests/_coturn.ts";
import {
  encodeStunMessage,
  newTransactionId,
  parseStunMessage,
  StunClass,
  StunMethod,
} from "../lib/stun/codec.ts";

const ROOT = new URL("../", import.meta.url);
const SOCKETS = 8;
const RATES = [2_000, 10_000, 20_000];
const RATE_SECONDS = 3;
const WINDOW = 64; // per socket, closed loop
const CLOSED_SECONDS = 3;

interface Result {
  server: string;
  scenario: string;
  offered_per_sec: number | null;
  sent: number;
  answered: number;
  loss_pct: number;
  responses_per_sec: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function round(n: number, digits = 3): number {
  return Number.isFinite(n) ? Number(n.toFixed(digits)) : n;
}

/** A load generator over several sockets; latency keyed by transaction id. */
class Load {
  sockets: Deno.DatagramConn[];
  inflight = new Map<string, number>();
  latencies: number[] = [];
  sent = 0;
  answered = 0;
  onAnswer: (socket: number) => void = () => {};
  #loops: Promise<void>[];
  #closed = false;

  constructor(readonly target: { hostname: string; port: number }) {
    this.sockets = Array.from(
      { length: SOCKETS },
      () => Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 }),
    );
    this.#loops = this.sockets.map((s, i) => this.#receive(s, i));
  }

  static key(txid: Uint8Array): string {
    return String.fromCharCode(...txid);
  }

  send(socket: number): void {
    const txid = newTransactionId();
    const bytes = encodeStunMessage({
      method: StunMethod.BINDING,
      cls: StunClass.REQUEST,
      transactionId: txid,
    });
    this.inflight.set(Load.key(txid), performance.now());
    this.sent++;
    this.sockets[socket].send(bytes, { transport: "udp", ...this.target }).catch(() => {});
  }

  async #receive(conn: Deno.DatagramConn, index: number): Promise<void> {
    while (!this.#closed) {
      let data: Uint8Array;
      try {
        [data] = await conn.receive();
      } catch {
        if (this.#closed) return;
        continue;
      }
      const now = performance.now();
      let txid: Uint8Array;
      try {
        const m = parseStunMessage(data);
        if (m.cls !== StunClass.SUCCESS) continue;
        txid = m.transactionId;
      } catch {
        continue;
      }
      const key = Load.key(txid);
      const started = this.inflight.get(key);
      if (started === undefined) continue;
      this.inflight.delete(key);
      this.latencies.push(now - started);
      this.answered++;
      this.onAnswer(index);
    }
  }

  result(server: string, scenario: string, offered: number | null, seconds: number): Result {
    const sorted = this.latencies.slice().sort((a, b) => a - b);
    return {
      server,
      scenario,
      offered_per_sec: offered,
      sent: this.sent,
      answered: this.answered,
      loss_pct: round(this.sent ? (100 * (this.sent - this.answered)) / this.sent : 0, 2),
      responses_per_sec: Math.round(this.answered / seconds),
      p50_ms: round(percentile(sorted, 50)),
      p99_ms: round(percentile(sorted, 99)),
      max_ms: round(sorted.at(-1) ?? NaN),
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const s of this.sockets) s.close();
    await Promise.all(this.#loops);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function openLoop(server: string, target: { hostname: string; port: number }, rate: number) {
  const load = new Load(target);
  const start = performance.now();
  const end = start + RATE_SECONDS * 1000;
  let due = 0;
  let next = 0;
  // Pace in 5 ms slices: send what is due so far, spread over the sockets.
  while (performance.now() < end) {
    const elapsed = performance.now() - start;
    const target = Math.floor((elapsed / 1000) * rate);
    for (; due < target; due++) load.send(next++ % SOCKETS);
    await sleep(5);
  }
  await sleep(500); // let the last answers arrive
  const result = load.result(server, `open loop ${rate}/s`, rate, RATE_SECONDS);
  await load.close();
  return result;
}

async function closedLoop(server: string, target: { hostname: string; port: number }) {
  const load = new Load(target);
  let running = true;
  load.onAnswer = (socket) => {
    if (running) load.send(socket);
  };
  for (let s = 0; s < SOCKETS; s++) for (let w = 0; w < WINDOW; w++) load.send(s);
  await sleep(CLOSED_SECONDS * 1000);
  running = false;
  const answeredAtStop = load.answered;
  await sleep(300);
  const result = load.result(
    server,
    `closed loop ${SOCKETS}x${WINDOW} in flight`,
    null,
    CLOSED_SECONDS,
  );
  result.responses_per_sec = Math.round(answeredAtStop / CLOSED_SECONDS);
  result.loss_pct = NaN; // a window, not an offered load
  await load.close();
  return result;
}

async function freeUdpPort(): Promise<number> {
  const conn = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const port = (conn.addr as Deno.NetAddr).port;
  conn.close();
  await Promise.resolve();
  return port;
}

async function waitAnswering(port: number): Promise<void> {
  const load = new Load({ hostname: "127.0.0.1", port });
  try {
    for (let i = 0; i < 100 && load.answered === 0; i++) {
      load.send(0);
      await sleep(50);
    }
    if (load.answered === 0) throw new Error(`nothing answers on 127.0.0.1:${port}`);
  } finally {
    await load.close();
  }
}

async function run(
  name: string,
  command: string,
  args: string[],
  port: number,
  env: Record<string, string> = {},
): Promise<Result[]> {
  const child = new Deno.Command(command, {
    args,
    env,
    cwd: ROOT.pathname,
    stdout: "null",
    stderr: "null",
  })
    .spawn();
  try {
    await waitAnswering(port);
    const results: Result[] = [];
    for (const rate of RATES) {
      results.push(await openLoop(name, { hostname: "127.0.0.1", port }, rate));
    }
    results.push(await closedLoop(name, { hostname: "127.0.0.1", port }));
    return results;
  } finally {
    child.kill("SIGTERM");
    await child.status;
  }
}

async function commandExists(command: string): Promise<boolean> {
  try {
    await new Deno.Command(command, { args: ["-h"], stdout: "null", stderr: "null" }).output();
    return true;
  } catch {
    return false;
  }
}

const ours = await freeUdpPort();
const results: Result[] = await run(
  "holepunch stun.ts",
  Deno.execPath(),
  ["run", "--allow-net", "--allow-env", "stun.ts"],
  ours,
  { STUN_PORT: String(ours), STUN_HOST: "127.0.0.1", LOG_LEVEL: "warn" },
);

if (await commandExists("turnserver")) {
  const port = freeTurnPort();
  results.push(
    ...await run("coturn turnserver", "turnserver", turnserverArgs(port, "/dev/null"), port),
  );
} else {
  console.error("turnserver not found (Debian package coturn): measuring our server only");
}

const machine = {
  cores: navigator.hardwareConcurrency,
  loadavg_before: Deno.loadavg(),
  deno: Deno.version.deno,
  os: Deno.build.os,
  date: new Date().toISOString(),
  note: "load generator and server share the machine's cores",
};

console.log(
  `\nSTUN Binding benchmark on loopback (${machine.cores} cores, Deno ${machine.deno})\n`,
);
const header = ["server", "scenario", "answered/s", "loss %", "p50 ms", "p99 ms", "max ms"];
const rows = results.map((r) => [
  r.server,
  r.scenario,
  String(r.responses_per_sec),
  Number.isNaN(r.loss_pct) ? "-" : String(r.loss_pct),
  String(r.p50_ms),
  String(r.p99_ms),
  String(r.max_ms),
]);
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
for (const row of [header, widths.map((w) => "-".repeat(w)), ...rows]) {
  console.log(row.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd());
}
await Deno.mkdir(new URL("bench/results/", ROOT), { recursive: true });
const file = new URL(`bench/results/stun-${machine.date.replace(/[:.]/g, "-")}.json`, ROOT);
await Deno.writeTextFile(file, JSON.stringify({ machine, results }, null, 2) + "\n");
console.log(`\nwrote ${file.pathname}`);
