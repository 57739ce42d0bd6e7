/**
 * Peer-connection throughput in the NAT lab (needs root): two hosts behind
 * two endpoint-independent Linux NATs, a direct path punched between them,
 * and a TCP stream carried through PEER_FORWARD / PEER_EXPOSE, at 0 %, 1 %
 * and 5 % random UDP loss (iptables `statistic` on the sender's host, both
 * directions). Checks the bytes (length and SHA-256) and writes
 * bench/results/nat-transport-*.json.
 *
 * Run: `deno task bench:natlab-transport` (`-- --mb N`, default 100; `--runs N`, default 3;
 * `--cc low-latency` for that congestion controller).
 *
 * @module
 */

import { NetLab, netlabUnavailable } from "../tests/_netlab.ts";

const flag = (name: string, fallback: number) => {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Number(Deno.args[i + 1]) : fallback;
};
const MB = flag("--mb", 100);
const RUNS = flag("--runs", 3);
const ccAt = Deno.args.indexOf("--cc");
const CC = ccAt >= 0 ? Deno.args[ccAt + 1] : "default";
const why = await netlabUnavailable();
if (why) {
  console.error(`nat transport benchmark cannot run: ${why}`);
  Deno.exit(1);
}

async function run(loss: number): Promise<{ mbps: number; path: string }> {
  const lab = await NetLab.create();
  try {
    await lab.startServices();
    const [a] = await lab.addNatted("eim");
    const [b] = await lab.addNatted("eim");
    const service = lab.deno(b.ns, [
      "run",
      "--allow-all",
      "tests/_stream_tools.ts",
      "hash-server",
      "9000",
    ]);
    await service.waitForLog("listening", () => true, 20_000);
    const workerB = lab.worker(b, "nt-b", { PEER_EXPOSE: "9000", PEER_CONGESTION_CONTROL: CC });
    const workerA = lab.worker(a, "nt-a", {
      PEER_FORWARD: "9100:nt-b:9000",
      PEER_AUTOCONNECT: "true",
      PEER_CONGESTION_CONTROL: CC,
    });
    await workerB.waitForLog("registered with rendezvous", () => true, 20_000);
    const direct = await workerA.waitForLog("peer path direct", () => true, 30_000);
    if (loss > 0) {
      for (const chain of ["INPUT", "OUTPUT"]) {
        // deno-fmt-ignore
        await lab.iptables(a.ns, "-A", chain, "-p", "udp", "-m", "statistic", "--mode", "random",
          "--probability", String(loss), "-j", "DROP");
      }
    }
    const bytes = MB * 1_000_000;
    const sender = lab.deno(a.ns, [
      "run",
      "--allow-all",
      "tests/_stream_tools.ts",
      "send-many",
      "9100",
      String(bytes),
    ]);
    const result = await sender.waitForLog("transfer", () => true, 600_000);
    if (result.ok !== true) throw new Error(`transfer failed: ${JSON.stringify(result)}`);
    const lost = workerA.lines.filter((l) => l.message === "peer direct path lost").length;
    return {
      mbps: bytes / ((result.ms as number) / 1000) / 1e6,
      path: lost > 0
        ? `direct (lost ${lost}×)`
        : String(direct.message === "peer path direct" ? "direct" : "?"),
    };
  } finally {
    await lab.destroy();
  }
}

const started = new Date();
const machine = {
  date: started.toISOString(),
  cores: navigator.hardwareConcurrency,
  loadavg_before: Deno.loadavg(),
  deno: Deno.version.deno,
};
console.error(
  `nat transport benchmark: ${MB} MB a run, ${RUNS} runs, ${CC} congestion control; load ${
    machine.loadavg_before.join(" ")
  }`,
);
const results: Record<string, { mb_s: number[]; paths: string[] }> = {};
for (const loss of [0, 0.01, 0.05]) {
  const key = `${loss * 100} % loss`;
  results[key] = { mb_s: [], paths: [] };
  for (let i = 0; i < RUNS; i++) {
    const r = await run(loss);
    results[key].mb_s.push(Number(r.mbps.toFixed(1)));
    results[key].paths.push(r.path);
    console.error(`${key}: ${r.mbps.toFixed(1)} MB/s (${r.path})`);
  }
}
const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const clean = median(results["0 % loss"].mb_s);
for (const [key, r] of Object.entries(results)) {
  console.log(
    `${key.padEnd(10)} median ${median(r.mb_s)} MB/s (${r.mb_s.join(", ")}), ${
      (100 * median(r.mb_s) / clean).toFixed(0)
    } % of clean; ${r.paths.join(", ")}`,
  );
}
await Deno.mkdir(new URL("results/", import.meta.url), { recursive: true });
const file = new URL(
  `results/nat-transport-${started.toISOString().replace(/[:.]/g, "-")}.json`,
  import.meta.url,
);
await Deno.writeTextFile(
  file,
  JSON.stringify(
    {
      machine: { ...machine, loadavg_after: Deno.loadavg() },
      mb: MB,
      runs: RUNS,
      congestion_control: CC,
      results,
    },
    null,
    2,
  ),
);
console.log(`written: ${file.pathname}`);
