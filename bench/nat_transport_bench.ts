/**
 * Peer-connection throughput in the NAT lab (needs root): two hosts behind
 * two endpoint-independent Linux NATs, a direct path punched between them,
 * and a TCP stream carried through PEER_FORWARD / PEER_EXPOSE, at 0 %, 1 %
 * and 5 % random UDP loss (iptables `statistic` on the sender's host, both
 * directions). Checks the bytes (length and SHA-256) and writes
 * bench/results/nat-transport-*.json.
 *
 * `--path-changes`: instead, one 1 GiB stream between two public lab hosts
 * while its path goes relay → direct → relay (UDP between them blocked) →
 * direct, the blocks and unblocks made while bytes flow; the sender is held
 * at each phase's end until the path has changed (it may not outrun the
 * change). Reports each phase's path, bytes and rate, and the SHA-256 check.
 *
 * Run: `deno task bench:natlab-transport` (`-- --mb N`, default 100; `--runs N`, default 3;
 * `--cc low-latency` for that congestion controller; `--path-changes`).
 *
 * @module
 */

import { NetLab, netlabUnavailable } from "../tests/_netlab.ts";
import { LINK_TIMING } from "../lib/peer/link.ts";
import { machineState, median, numberFlag, stringFlag } from "./_common.ts";

const MB = numberFlag("--mb", 100);
const RUNS = numberFlag("--runs", 3);
const CC = stringFlag("--cc", "default");
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
    await lab.hashServer(b);
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

const MIB = 1024 * 1024;

/** One 1 GiB stream across four paths; see the module doc. */
async function pathChanges() {
  const lab = await NetLab.create();
  const allowFile = await Deno.makeTempFile();
  try {
    await lab.startServices();
    const a = await lab.addPublicHost();
    const b = await lab.addPublicHost();
    const udp = (op: "-A" | "-D") => lab.udpBetween(op, a, b);
    await udp("-A");
    await lab.hashServer(b);
    const workerB = lab.worker(b, "pc-b", { PEER_EXPOSE: "9000", PEER_CONGESTION_CONTROL: CC });
    const workerA = lab.worker(a, "pc-a", {
      PEER_FORWARD: "9100:pc-b:9000",
      PEER_CONGESTION_CONTROL: CC,
    });
    await workerA.waitForLog("forward listening", () => true, 20_000);
    await workerB.waitForLog("registered with rendezvous", () => true, 20_000);
    await workerA.waitForLog("registered with rendezvous", () => true, 20_000);
    const total = 1024 * MIB;
    const allow = (bytes: number) => Deno.writeTextFile(allowFile, String(bytes));
    await allow(256 * MIB);
    const t0 = performance.now();
    const sender = lab.deno(a.ns, [
      "run",
      "--allow-all",
      "tests/_stream_tools.ts",
      "send-gated",
      "9100",
      String(total),
      allowFile,
    ]);
    const progress = (bytes: number) =>
      sender.waitForLog("progress", (l) => (l.bytes as number) >= bytes, 600_000);
    const at = () => ({
      ms: performance.now() - t0,
      bytes: (sender.lines.findLast((l) => l.message === "progress")?.bytes as number) ?? 0,
    });
    const marks: { event: string; ms: number; bytes: number }[] = [];
    const mark = (event: string) => {
      marks.push({ event, ...at() });
      console.error(
        `  ${event} at ${(at().bytes / MIB).toFixed(0)} MiB, ${(at().ms / 1000).toFixed(1)} s`,
      );
    };
    const opened = await workerA.waitForLog("peer connection open", () => true, 20_000);
    if (opened.path !== "relay") {
      throw new Error(`the stream started on ${opened.path}, not the relay`);
    }
    mark("start (relay)");
    await progress(128 * MIB);
    await udp("-D");
    mark("UDP unblocked");
    const direct1 = await workerA.waitForLog(
      "peer path direct",
      () => true,
      LINK_TIMING.upgradeRetryMs + 30_000,
    );
    mark("direct");
    await allow(768 * MIB);
    await progress(512 * MIB);
    await udp("-A");
    mark("UDP blocked");
    const lost = await workerA.waitForLog(
      "peer direct path lost",
      () => true,
      LINK_TIMING.keepaliveMs + LINK_TIMING.lostAfterMs + 10_000,
      workerA.lines.indexOf(direct1) + 1,
    );
    mark("relay");
    await progress(640 * MIB);
    await udp("-D");
    mark("UDP unblocked");
    await workerA.waitForLog(
      "peer path direct",
      () => true,
      LINK_TIMING.upgradeRetryMs + 30_000,
      workerA.lines.indexOf(lost) + 1,
    );
    mark("direct");
    await allow(total);
    const sent = await sender.waitForLog("sent", () => true, 600_000);
    marks.push({ event: "end", ms: performance.now() - t0, bytes: sent.bytes as number });
    const ok = sent.answer === `${sent.bytes} ${sent.sha256}` && sent.bytes === total;
    return { ok, bytes: sent.bytes, sha256: sent.sha256, answer: sent.answer, marks };
  } finally {
    await lab.destroy();
    await Deno.remove(allowFile).catch(() => {});
  }
}

if (Deno.args.includes("--path-changes")) {
  const started = new Date();
  const machine = machineState(started);
  console.error(
    `1 GiB across relay → direct → relay → direct, ${CC}; load ${machine.loadavg_before.join(" ")}`,
  );
  const result = await pathChanges();
  console.log(
    `${
      result.ok ? "byte-exact" : "MISMATCH"
    }: ${result.bytes} bytes, sha256 ${result.sha256}; answer ${result.answer}`,
  );
  for (const [i, m] of result.marks.entries()) {
    const next = result.marks[i + 1];
    const rate = next ? ((next.bytes - m.bytes) / ((next.ms - m.ms) / 1000) / 1e6).toFixed(1) : "";
    console.log(
      `${(m.ms / 1000).toFixed(1).padStart(6)} s  ${
        (m.bytes / MIB).toFixed(0).padStart(5)
      } MiB  ${m.event}${rate ? `  (then ${rate} MB/s)` : ""}`,
    );
  }
  await Deno.mkdir(new URL("results/", import.meta.url), { recursive: true });
  const file = new URL(
    `results/nat-path-changes-${started.toISOString().replace(/[:.]/g, "-")}.json`,
    import.meta.url,
  );
  await Deno.writeTextFile(
    file,
    JSON.stringify(
      {
        machine: { ...machine, loadavg_after: Deno.loadavg() },
        congestion_control: CC,
        ...result,
      },
      null,
      2,
    ),
  );
  console.log(`written: ${file.pathname}`);
  Deno.exit(result.ok ? 0 : 1);
}

const started = new Date();
const machine = machineState(started);
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
