/**
 * The transport benchmark (`deno task bench:transport`): two worker
 * processes on loopback, each a whole worker (`startWorker`), moving bytes
 * over their peer connection, next to the floors measured in the same run:
 * Deno's bare QUIC between two processes, and raw UDP datagrams.
 *
 *   direct, 1 stream and 8 streams — after the punch (two local STUN servers)
 *   relay, 1 stream                — STUN off: the rendezvous carries every packet
 *
 * Per scenario: throughput (median of `--runs`, default 3), time to first
 * byte after `connect()`, wire bytes per payload byte on the sender (QUIC
 * headers, acknowledgements and retransmissions together), and CPU seconds
 * per GB (both workers), and the round trip of 8-byte datagrams right after
 * the first byte (on the relay, which carries a connection until the punch
 * is through): the first-byte target is "relay RTT + 20 ms". Flags: `--mb N`
 * (payload per run, default 500; the relay moves a fifth of it), `--runs N`,
 * `--cc default|throughput|low-latency`, `--io auto|ffi|deno` (`PEER_UDP_IO`), `--quick`. Prints a table and
 * writes bench/results/transport-*.json.
 *
 * @module
 */

import { StunServer } from "../lib/stun/server.ts";
import { formatAddress } from "../lib/stun/client.ts";
import { machineState, median, numberFlag, stringFlag } from "./_common.ts";

const ROOT = new URL("../", import.meta.url);
const quick = Deno.args.includes("--quick");
const MB = numberFlag("--mb", quick ? 20 : 500);
const RUNS = numberFlag("--runs", quick ? 1 : 3);
const CC = stringFlag("--cc", "default");
const IO = stringFlag("--io", "auto");
const round = (x: number, d = 1) => Number(x.toFixed(d));

interface Child {
  proc: Deno.ChildProcess;
  lines: Record<string, unknown>[];
  line(pred: (l: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
}

function spawn(file: string, extra: string[], stderr = false): Child {
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--unstable-net", file, ...extra],
    cwd: ROOT.pathname,
    stdout: "piped",
    stderr: stderr ? "piped" : "null",
    env: { LOG_FORMAT: "json" },
  }).spawn();
  const lines: Record<string, unknown>[] = [];
  const waiters: {
    pred: (l: Record<string, unknown>) => boolean;
    resolve: (l: Record<string, unknown>) => void;
  }[] = [];
  const read = async (stream: ReadableStream<Uint8Array>) => {
    let buffer = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      buffer += chunk;
      let i;
      while ((i = buffer.indexOf("\n")) >= 0) {
        const text = buffer.slice(0, i);
        buffer = buffer.slice(i + 1);
        try {
          const l = JSON.parse(text);
          lines.push(l);
          for (const w of waiters.filter((w) => w.pred(l))) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve(l);
          }
        } catch { /* not JSON */ }
      }
    }
  };
  void read(proc.stdout);
  if (stderr) void read(proc.stderr);
  return {
    proc,
    lines,
    line: (pred) => {
      const found = lines.find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve) => waiters.push({ pred, resolve }));
    },
  };
}

function deadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function floorQuic(bytes: number): Promise<{ mbps: number; cpuPerGb: number }> {
  const file = await Deno.makeTempFile();
  await Deno.remove(file);
  const server = spawn("bench/_quic_floor.ts", ["quic-server", file]);
  while (true) {
    try {
      if ((await Deno.readTextFile(file)).length > 0) break;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 20));
  }
  const client = spawn("bench/_quic_floor.ts", ["quic-client", file, String(bytes)]);
  const result = await deadline(client.line((l) => "mb_per_s" in l), 60_000, "bare QUIC");
  const served = await deadline(server.line((l) => "cpu_s" in l), 10_000, "bare QUIC's server");
  await client.proc.status;
  await server.proc.status;
  await Deno.remove(file);
  const cpu = (result.cpu_s as number) + (served.cpu_s as number);
  return { mbps: result.mb_per_s as number, cpuPerGb: cpu / (bytes / 1e9) };
}

async function floorUdp(seconds: number): Promise<number> {
  const file = await Deno.makeTempFile();
  await Deno.remove(file);
  const recv = spawn("bench/_quic_floor.ts", ["udp-recv", file, String(seconds)]);
  while (true) {
    try {
      if ((await Deno.readTextFile(file)).length > 0) break;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 20));
  }
  const send = spawn("bench/_quic_floor.ts", ["udp-send", file, String(seconds)]);
  await send.proc.status;
  const result = await deadline(recv.line((l) => "mb_per_s" in l), 30_000, "raw UDP");
  await recv.proc.status;
  await Deno.remove(file);
  return result.mb_per_s as number;
}

async function transfer(
  rendezvous: string,
  stun: string,
  run: number,
  bytes: number,
  streams: number,
  direct: boolean,
) {
  const base = { rendezvous, bytes, streams, stun, direct, cc: CC, io: IO };
  const tag = `${direct ? "d" : "r"}${streams}-${run}`;
  const recv = spawn("bench/_transport_peer.ts", [
    JSON.stringify({ ...base, role: "recv", id: `recv-${tag}`, peer: `send-${tag}` }),
  ]);
  const send = spawn("bench/_transport_peer.ts", [
    JSON.stringify({ ...base, role: "send", id: `send-${tag}`, peer: `recv-${tag}` }),
  ]);
  const sent = await deadline(send.line((l) => "mb_per_s" in l), 180_000, `transfer ${tag}`);
  const got = await deadline(recv.line((l) => "received" in l), 30_000, `receiver ${tag}`);
  await send.proc.status;
  await recv.proc.status;
  if ((got.received as number) !== (sent.bytes as number) + 1) {
    throw new Error(`receiver counted ${got.received} bytes, sender sent ${sent.bytes}`);
  }
  return {
    path: sent.path as string,
    mbps: sent.mb_per_s as number,
    firstByteMs: sent.first_byte_ms as number,
    wireRatio: (sent.wire_bytes as number) / (sent.bytes as number),
    pingPath: sent.ping_path as string,
    pingMs: sent.ping_ms as number | null,
    cpuPerGb: ((sent.cpu_s as number) + (got.cpu_s as number)) / ((sent.bytes as number) / 1e9),
  };
}

// ---- the run ----------------------------------------------------------------

const started = new Date();
const machine = machineState(started);
console.error(
  `transport benchmark: ${MB} MB per run, ${RUNS} runs, congestion control ${CC}, udp io ${IO}; load ${
    machine.loadavg_before.join(" ")
  }`,
);

const stunA = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
const stunB = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
const stun = [stunA, stunB].map((s) => formatAddress(s.addresses[0])).join(",");
const rendezvous = spawn("rendezvous.ts", [], true);
const listening = await deadline(
  rendezvous.line((l) => l.message === "rendezvous listening"),
  10_000,
  "the rendezvous",
);
const rendezvousUrl = `http://127.0.0.1:${listening.port}`;

const bytes = MB * 1_000_000;
const results: Record<string, unknown> = {};
const floorsQuic: number[] = [];
const floorsQuicCpu: number[] = [];
const floorsUdp: number[] = [];
for (let i = 0; i < RUNS; i++) {
  const floor = await floorQuic(bytes);
  floorsQuic.push(floor.mbps);
  floorsQuicCpu.push(floor.cpuPerGb);
  floorsUdp.push(await floorUdp(quick ? 1 : 3));
}
const quic = median(floorsQuic);
const quicCpu = median(floorsQuicCpu);
results.floor = {
  bare_quic_mb_s: floorsQuic.map((x) => round(x)),
  bare_quic_cpu_s_per_gb: floorsQuicCpu.map((x) => round(x, 2)),
  raw_udp_mb_s: floorsUdp.map((x) => round(x)),
};
console.error(
  `floor: bare QUIC ${floorsQuic.map((x) => round(x)).join(", ")} MB/s at ${
    floorsQuicCpu.map((x) => round(x, 2)).join(", ")
  } CPU s/GB; raw UDP ${floorsUdp.map((x) => round(x)).join(", ")} MB/s`,
);

const scenarios = [
  { name: "direct, 1 stream", streams: 1, direct: true, bytes },
  { name: "direct, 8 streams", streams: 8, direct: true, bytes },
  { name: "relay, 1 stream", streams: 1, direct: false, bytes: Math.round(bytes / 5) },
];
const table: string[][] = [[
  "scenario",
  "MB/s (runs)",
  "% bare QUIC",
  "first byte ms",
  "relay RTT ms",
  "wire/payload",
  "CPU s/GB",
]];
for (const s of scenarios) {
  const runs = [];
  for (let i = 0; i < RUNS; i++) {
    runs.push(
      await transfer(rendezvousUrl, s.direct ? stun : "off", i, s.bytes, s.streams, s.direct),
    );
  }
  const paths = new Set(runs.map((r) => r.path));
  const mbps = median(runs.map((r) => r.mbps));
  const row = {
    paths: [...paths],
    mb_s: runs.map((r) => round(r.mbps)),
    median_mb_s: round(mbps),
    pct_of_bare_quic: round(100 * mbps / quic),
    first_byte_ms: runs.map((r) => round(r.firstByteMs)),
    relay_rtt_ms: runs.map((r) =>
      r.pingPath === "relay" && r.pingMs !== null ? round(r.pingMs, 2) : null
    ),
    wire_per_payload: runs.map((r) => round(r.wireRatio, 3)),
    cpu_s_per_gb: runs.map((r) => round(r.cpuPerGb, 2)),
  };
  results[s.name] = row;
  table.push([
    `${s.name} (${row.paths.join("/")})`,
    `${row.median_mb_s} (${row.mb_s.join(", ")})`,
    `${row.pct_of_bare_quic}`,
    row.first_byte_ms.join(", "),
    row.relay_rtt_ms.map((x) => x ?? "–").join(", "),
    row.wire_per_payload.join(", "),
    row.cpu_s_per_gb.join(", "),
  ]);
  console.error(`${s.name}: ${JSON.stringify(row)}`);
}

rendezvous.proc.kill("SIGTERM");
await rendezvous.proc.status;
await stunA.close();
await stunB.close();

// The targets, judged on medians.
const med = (name: string, key: string) =>
  median(
    (results[name] as Record<string, (number | null)[]>)[key].filter((x) => x !== null) as number[],
  );
const relayRtt = median(
  scenarios.flatMap((s) => (results[s.name] as { relay_rtt_ms: (number | null)[] }).relay_rtt_ms)
    .filter((x): x is number => x !== null),
);
const direct1 = (results["direct, 1 stream"] as { median_mb_s: number }).median_mb_s;
const direct8 = (results["direct, 8 streams"] as { median_mb_s: number }).median_mb_s;
const firstByte = Math.max(...scenarios.map((s) => med(s.name, "first_byte_ms")));
const cpuRatio = med("direct, 1 stream", "cpu_s_per_gb") / quicCpu;
// Issue 21's targets (the first-byte one is issue 12's, kept).
const targets = {
  direct_mb_s: { value: direct1, target: ">= 40", met: direct1 >= 40 },
  pct_of_bare_quic: {
    value: round(100 * direct1 / quic),
    target: ">= 25",
    met: 100 * direct1 / quic >= 25,
  },
  eight_streams_vs_one: {
    value: round(100 * direct8 / direct1),
    target: ">= 90 %",
    met: direct8 >= 0.9 * direct1,
  },
  cpu_vs_bare_quic: {
    value: round(cpuRatio, 2),
    target: `<= 3× bare QUIC's ${round(quicCpu, 2)} s/GB`,
    met: cpuRatio <= 3,
  },
  relay_mb_s: {
    value: (results["relay, 1 stream"] as { median_mb_s: number }).median_mb_s,
    target: ">= 15",
    met: (results["relay, 1 stream"] as { median_mb_s: number }).median_mb_s >= 15,
  },
  first_byte_ms: {
    value: firstByte,
    target: `<= relay RTT ${round(relayRtt, 2)} + 20`,
    met: firstByte <= relayRtt + 20,
  },
};
results.targets = targets;

const widths = table[0].map((_, i) => Math.max(...table.map((r) => r[i].length)));
for (const [i, r] of table.entries()) {
  console.log(r.map((c, j) => c.padEnd(widths[j])).join("  "));
  if (i === 0) console.log(widths.map((w) => "-".repeat(w)).join("  "));
}
const out = {
  machine: { ...machine, loadavg_after: Deno.loadavg() },
  mb_per_run: MB,
  congestion_control: CC,
  udp_io: IO,
  runs: RUNS,
  results,
};
await Deno.mkdir(new URL("bench/results/", ROOT), { recursive: true });
const file = new URL(
  `bench/results/transport-${started.toISOString().replace(/[:.]/g, "-")}.json`,
  ROOT,
);
await Deno.writeTextFile(file, JSON.stringify(out, null, 2));
console.log("");
for (const [name, t] of Object.entries(targets)) {
  console.log(`${t.met ? "met    " : "MISSED "} ${name}: ${t.value} (${t.target})`);
}
console.log(`\nwritten: ${file.pathname}`);
