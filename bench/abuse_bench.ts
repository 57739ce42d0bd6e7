/**
 * The abuse benchmark (`deno task bench:abuse`, or `deno task bench --only
 * abuse`): attacks on a real rendezvous process on loopback, each next to a
 * healthy worker whose echo round trip is measured before (the floor) and
 * during the attack in the same run.
 *
 *   non-readers — clients that never read, sending 60 KB echoes and
 *                 listings at 20/s each: RSS growth, how many were closed
 *                 and how soon
 *   relay sink  — senders relaying 16 KB frames at 200/s to a worker that
 *                 never reads: RSS growth, when it is closed
 *   guesses     — wrong bearer tokens from one client as fast as it can:
 *                 how many were checked before the 429s
 *   big frames  — eight 32 MiB frames: RSS growth until the sessions close
 *                 (Deno reads a frame whole before its size can be refused)
 *   victim      — five registrants name a victim's ports as their endpoint
 *                 and ask a real worker for introductions twice a second:
 *                 packets that reach the victim, against the send budget
 *   fake members — `--members N` (500) group members against a real worker
 *                 behind an endpoint-dependent NAT, each asking for an
 *                 introduction and relaying QUIC Initials: the worker's
 *                 descriptors and RSS at the peak, its health endpoint's
 *                 round trip meanwhile, and how soon it gives all back
 *
 * Flags: `--clients N` (40), `--seconds S` (20). Prints a table; writes
 * bench/results/abuse-*.json.
 *
 * @module
 */

import { machineState, numberFlag, percentile } from "./_common.ts";
import { RawWebSocket } from "../tests/_raw_ws.ts";
import { spawnRendezvous, TestClient } from "../tests/_helpers.ts";
import { fakeMembersAttack, heartbeat, peakRss, rssMb, victimAttack } from "../tests/_abuse.ts";

const ROOT = new URL("../", import.meta.url);
const CLIENTS = numberFlag("--clients", 40);
const SECONDS = numberFlag("--seconds", 20);
const MEMBERS = numberFlag("--members", 500);
const TOKEN = "abuse-bench-token-0123456789";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const machine = machineState();

type Rendezvous = Awaited<ReturnType<typeof spawnRendezvous>>;

const rows: { attack: string; metric: string; value: string | number }[] = [];
const row = (attack: string, metric: string, value: string | number) => {
  rows.push({ attack, metric, value });
  console.error(`${attack}: ${metric} = ${value}`);
};
const ms = (xs: number[], p: number) => xs.length ? percentile(xs, p).toFixed(1) : "–";

/** The healthy worker's echo before (floor) and during an attack. */
async function withHealthy(
  attack: string,
  rv: Rendezvous,
  run: () => Promise<void>,
) {
  const healthy = await TestClient.connect(`ws://127.0.0.1:${rv.port}/ws/register/healthy`);
  const floor = heartbeat(healthy, 50);
  await sleep(2000);
  const before = await floor.stop();
  const during = heartbeat(healthy, 50);
  await run();
  const after = await during.stop();
  row(
    attack,
    "healthy echo p50 / p99 ms, floor",
    `${ms(before.rtts, 0.5)} / ${ms(before.rtts, 0.99)}`,
  );
  row(
    attack,
    "healthy echo p50 / p99 / max ms, during",
    `${ms(after.rtts, 0.5)} / ${ms(after.rtts, 0.99)} / ${ms(after.rtts, 1)}` +
      (after.lost ? `, ${after.lost} lost` : ""),
  );
  await healthy.close().catch(() => {});
}

// ---- clients that never read ----------------------------------------------------
{
  const rv = await spawnRendezvous();
  const before = await rssMb(rv.proc.child.pid);
  const top = peakRss(rv.proc.child.pid);
  const closed = () =>
    rv.proc.lines.filter((l) => l.message === "worker closed: not reading").length;
  let closedAt = 0;
  await withHealthy("non-readers", rv, async () => {
    const started = performance.now();
    const sockets = await Promise.all(
      Array.from(
        { length: CLIENTS },
        (_, i) => RawWebSocket.open(rv.port, `/ws/register/sink-${i}`),
      ),
    );
    const big = JSON.stringify({ type: "echo_request", payload: "x".repeat(60_000) });
    const list = JSON.stringify({ type: "list_peers", watch: false });
    await Promise.all(sockets.map(async (s) => {
      const end = started + SECONDS * 1000;
      while (performance.now() < end && !s.broken && closed() < CLIENTS) {
        await s.sendText(big);
        await s.sendText(list);
        await sleep(50);
      }
    }));
    closedAt = performance.now() - started;
    for (const s of sockets) s.close();
  });
  row("non-readers", `closed of ${CLIENTS}`, `${closed()} (in ${(closedAt / 1000).toFixed(1)} s)`);
  row("non-readers", "RSS growth MB (peak)", ((await top.stop()) - before).toFixed(0));
  await rv.proc.stop();
}

// ---- relaying to a worker that never reads ---------------------------------------
{
  const rv = await spawnRendezvous();
  const before = await rssMb(rv.proc.child.pid);
  const top = peakRss(rv.proc.child.pid);
  let closedMs = 0;
  await withHealthy("relay sink", rv, async () => {
    const sink = await RawWebSocket.open(rv.port, "/ws/register/sink");
    const senders = await Promise.all(
      Array.from(
        { length: 10 },
        (_, i) => TestClient.connect(`ws://127.0.0.1:${rv.port}/ws/register/s${i}`),
      ),
    );
    const frame = JSON.stringify({ type: "relay", to: "sink", data: "A".repeat(16_384) });
    const started = performance.now();
    const closed = () => rv.proc.lines.some((l) => l.message === "worker closed: not reading");
    while (performance.now() - started < SECONDS * 1000 && !closed()) {
      for (const s of senders) for (let i = 0; i < 20; i++) s.socket.send(frame);
      await sleep(100);
    }
    closedMs = closed() ? performance.now() - started : 0;
    sink.close();
    for (const s of senders) await s.close().catch(() => {});
  });
  row("relay sink", "non-reader closed after s", closedMs ? (closedMs / 1000).toFixed(1) : "no");
  row("relay sink", "RSS growth MB (peak)", ((await top.stop()) - before).toFixed(0));
  await rv.proc.stop();
}

// ---- guessing the bearer token ----------------------------------------------------
{
  const rv = await spawnRendezvous({ RENDEZVOUS_TOKEN: TOKEN });
  const codes = new Map<number, number>();
  const started = performance.now();
  while (performance.now() - started < 5000) {
    const res = await fetch(`http://127.0.0.1:${rv.port}/metrics`, {
      headers: { authorization: "Bearer wrong-guess" },
    });
    await res.body?.cancel();
    codes.set(res.status, (codes.get(res.status) ?? 0) + 1);
  }
  const checked = codes.get(401) ?? 0;
  row("guesses", "wrong tokens checked in 5 s (401)", checked);
  row("guesses", "answered 429 without a check", codes.get(429) ?? 0);
  await rv.proc.stop();
}

// ---- eight 32 MiB frames ------------------------------------------------------------
{
  const rv = await spawnRendezvous();
  const before = await rssMb(rv.proc.child.pid);
  const top = peakRss(rv.proc.child.pid);
  const started = performance.now();
  const sockets = await Promise.all(
    Array.from({ length: 8 }, (_, i) => RawWebSocket.open(rv.port, `/ws/register/big-${i}`)),
  );
  const huge = JSON.stringify({ type: "echo_request", payload: "x".repeat(32 * 1024 * 1024) });
  await Promise.all(sockets.map((s) => s.sendText(huge)));
  const closedLines = () =>
    rv.proc.lines.filter((l) => l.message === "worker sent an oversize message");
  while (closedLines().length < 8 && performance.now() - started < 30_000) await sleep(100);
  row("big frames", "oversize sessions closed (1009)", `${closedLines().length} of 8`);
  row("big frames", "closed after s", ((performance.now() - started) / 1000).toFixed(1));
  for (const s of sockets) s.close();
  await sleep(1000);
  row("big frames", "RSS growth MB (peak)", ((await top.stop()) - before).toFixed(0));
  await rv.proc.stop();
}

// ---- registrants aiming a worker's probes at a victim -------------------------------
{
  const r = await victimAttack(SECONDS);
  row("victim", `packets at the victim in ${r.seconds} s (5 registrants)`, r.received);
  row("victim", "the send budget's bound for the run", r.allowed.toFixed(0));
  row(
    "victim",
    "punch rounds (all plain checks)",
    `${r.strategies.length} (${[...new Set(r.strategies)].join(", ")})`,
  );
}

// ---- fake group members against a hard-side worker ---------------------------------
if (Deno.build.os === "linux") {
  const r = await fakeMembersAttack(MEMBERS, { timeHealth: true });
  row("fake members", `hard-side rounds (of ${MEMBERS} members)`, r.rounds);
  row("fake members", "worker descriptors, before → peak", `${r.before.fds} → ${r.peak.fds}`);
  row("fake members", "worker RSS growth MB (peak)", (r.peak.rss - r.before.rss).toFixed(0));
  row(
    "fake members",
    "worker GET / p50 / p99 / max ms, during",
    `${ms(r.healthMs, 0.5)} / ${ms(r.healthMs, 0.99)} / ${ms(r.healthMs, 1)}`,
  );
  row("fake members", "transport packets refused", r.limits.transport_packets_refused);
  row("fake members", "punching packets held back by the pace", r.limits.punch_packets_paced);
  row("fake members", "all given back after the members left, ms", r.givenBackMs.toFixed(0));
}

console.log(`\nholepunch abuse benchmark (${JSON.stringify(machine)})\n`);
const widths = [14, 44];
for (const r of [{ attack: "attack", metric: "metric", value: "value" }, ...rows]) {
  console.log(`${r.attack.padEnd(widths[0])}  ${r.metric.padEnd(widths[1])}  ${r.value}`);
}
await Deno.mkdir(new URL("bench/results/", ROOT), { recursive: true });
const file = new URL(
  `bench/results/abuse-${new Date().toISOString().replace(/[:.]/g, "-")}.json`,
  ROOT,
);
await Deno.writeTextFile(file, JSON.stringify({ machine, rows }, null, 2) + "\n");
console.log(`\nwrote ${file.pathname}`);
