/**
 * Clients that never read, against a real rendezvous process: its memory
 * stays bounded, every non-reader is closed (4008), and a healthy worker's
 * heartbeats are all answered meanwhile.
 */
import assert from "node:assert/strict";
import { type Proc, spawnRendezvous, TestClient, waitFor, within } from "../_helpers.ts";
import { RawWebSocket } from "../_raw_ws.ts";
import { heartbeat, peakRss, rssMb } from "../_abuse.ts";

const closedForNotReading = (proc: Proc) =>
  proc.lines.filter((l) => l.message === "worker closed: not reading").length;

Deno.test("clients that never read are closed (4008) with the rendezvous's memory bounded, and a healthy worker is served throughout", async () => {
  const rv = await spawnRendezvous();
  const pid = rv.proc.child.pid;
  const attackers: RawWebSocket[] = [];
  const healthy = await TestClient.connect(`ws://127.0.0.1:${rv.port}/ws/register/healthy`);
  try {
    const before = await rssMb(pid);
    const peak = peakRss(pid);
    const beat = heartbeat(healthy, 100);
    const N = 40;
    for (let i = 0; i < N; i++) {
      attackers.push(await RawWebSocket.open(rv.port, `/ws/register/sink-${i}`));
    }
    // 60 KB echoes and listings at 20 a second each, until each is closed (20 s at most).
    const big = JSON.stringify({ type: "echo_request", payload: "x".repeat(60_000) });
    const list = JSON.stringify({ type: "list_peers", watch: false });
    const flood = attackers.map(async (a) => {
      const end = performance.now() + 20_000;
      while (performance.now() < end && !a.broken && closedForNotReading(rv.proc) < N) {
        await a.sendText(big);
        await a.sendText(list);
        await new Promise((r) => setTimeout(r, 50));
      }
    });
    await waitFor(() => closedForNotReading(rv.proc) === N, "every non-reader closed", 25_000);
    await Promise.all(flood);
    const { rtts: delays, lost, others } = await beat.stop();
    const grown = (await peak.stop()) - before;
    console.log(
      `${N} non-readers closed; RSS ${before.toFixed(0)} MB, peak +${grown.toFixed(0)} MB; ` +
        `${delays.length} heartbeats, slowest ${Math.max(...delays).toFixed(0)} ms`,
    );
    assert.ok(grown <= 150, `RSS grew ${grown.toFixed(0)} MB`);
    assert.deepEqual(
      { lost, others },
      { lost: 0, others: 0 },
      "every heartbeat answered, nothing else",
    );
    assert.ok(delays.length >= 5, "the healthy worker's heartbeats went on");
    assert.ok(Math.max(...delays) < 2000, `slowest heartbeat ${Math.max(...delays)} ms`);
    // The close frame waits behind what the attacker never read: Deno holds the session (its
    // buffer bounded) until the client goes, so the log line is the signal here, not the close.
    const closes = rv.proc.lines.filter((l) => l.message === "worker closed: not reading");
    assert.ok(closes.every((l) => (l.buffered_bytes as number) > (l.limit as number)));
  } finally {
    for (const a of attackers) a.close();
    await healthy.close().catch(() => {});
    await rv.proc.stop();
  }
});

Deno.test("relayed frames to a worker that never reads are dropped, and it is closed once full for 5 s", async () => {
  const rv = await spawnRendezvous();
  const pid = rv.proc.child.pid;
  const sink = await RawWebSocket.open(rv.port, "/ws/register/sink");
  const senders: TestClient[] = [];
  try {
    for (let i = 0; i < 10; i++) {
      senders.push(await TestClient.connect(`ws://127.0.0.1:${rv.port}/ws/register/s${i}`));
    }
    const before = await rssMb(pid);
    const peak = peakRss(pid);
    // 16 KB of base64 a frame, 200 frames a second from each sender.
    const frame = JSON.stringify({ type: "relay", to: "sink", data: "A".repeat(16_384) });
    let sending = true;
    const floods = senders.map(async (s) => {
      while (sending && s.socket.readyState === WebSocket.OPEN) {
        for (let i = 0; i < 20; i++) s.socket.send(frame);
        await new Promise((r) => setTimeout(r, 100));
      }
    });
    await waitFor(() => closedForNotReading(rv.proc) === 1, "the non-reader closed", 20_000);
    sending = false;
    await Promise.all(floods);
    const grown = (await peak.stop()) - before;
    console.log(`non-reader closed; RSS peak +${grown.toFixed(0)} MB`);
    assert.ok(grown <= 150, `RSS grew ${grown.toFixed(0)} MB`);
    const metrics = await (await fetch(`${rv.http}/metrics`)).text();
    const dropped = Number(
      /relay_refused_total\{reason="receiver_not_reading"\} (\d+)/.exec(metrics)?.[1],
    );
    assert.ok(dropped > 0, "frames were dropped, not queued");
    // The senders were never told off for the receiver's fault, and are still served.
    for (const s of senders) {
      s.send({ type: "echo_request", payload: "still here" });
      let answer = await s.next();
      while (answer.type !== "echo_response") answer = await s.next();
    }
  } finally {
    sink.close();
    for (const s of senders) await s.close().catch(() => {});
    await rv.proc.stop();
  }
});

Deno.test("list_peers is rate-limited per session: over LIST_RATE_PER_MIN an error answers", async () => {
  const rv = await spawnRendezvous({ LIST_RATE_PER_MIN: "6" });
  const client = await TestClient.connect(`ws://127.0.0.1:${rv.port}/ws/register/lister`);
  try {
    const answers: string[] = [];
    for (let i = 0; i < 8; i++) {
      client.send({ type: "list_peers", watch: false });
      const answer = await within(client.next(), 5000, "an answer");
      answers.push(answer.type === "error" ? `error:${answer.code}` : String(answer.type));
    }
    // A burst of 5 (at least), then refused until a token comes back (one every 10 s here).
    assert.deepEqual(answers, [...Array(5).fill("peers"), ...Array(3).fill("error:rate_limited")]);
    const metrics = await (await fetch(`${rv.http}/metrics`)).text();
    assert.match(metrics, /lists_refused_total 3/);
  } finally {
    await client.close();
    await rv.proc.stop();
  }
});
