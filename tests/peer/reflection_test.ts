/**
 * A registrant that names someone else's address as its UDP endpoint (and
 * claims a hard NAT, and asks to be introduced over and over) gets at most a
 * small, paced number of a real worker's packets sent there: the address is
 * not vouched for (the rendezvous sees the registrant elsewhere), so there is
 * no spray, the checks to an address that never answers are paced by the
 * worker's budget, and the introductions back off.
 */
import assert from "node:assert/strict";
import { SEND_BUDGET } from "../../lib/peer/send_budget.ts";
import { listWorkers, spawnRendezvous, spawnWorker, TestClient, waitFor } from "../_helpers.ts";

Deno.test("a registrant aiming a worker's probes at a victim gets a small, paced number there", async () => {
  const rv = await spawnRendezvous({ STUN_PORT: "0" });
  const stunPort = (await rv.proc.waitForLog("stun server listening")).port as number;
  const victim = Deno.listenDatagram({ hostname: "127.0.0.2", port: 0, transport: "udp" });
  const victimPort = (victim.addr as Deno.NetAddr).port;
  // The registrants name ports next to the victim's: the victim host counts them all.
  const others = Array.from(
    { length: 4 },
    (_, i) =>
      Deno.listenDatagram({ hostname: "127.0.0.2", port: victimPort + i + 1, transport: "udp" }),
  );
  let received = 0;
  const counting = Promise.all([victim, ...others].map(async (socket) => {
    try {
      for await (const _ of socket) received++;
    } catch {
      // closed
    }
  }));
  const worker = spawnWorker(rv.http, {
    WORKER_ID: "target",
    STUN_SERVERS: `127.0.0.1:${stunPort}`,
    PEER_HELLO_MS: "0",
  });
  const mallories: TestClient[] = [];
  try {
    await waitFor(
      async () => (await listWorkers(rv.http)).workers.target?.udp_endpoint,
      "the target's udp report",
    );
    // Five registrants (so five pairs, each with its own introduction backoff) aim at one victim.
    for (let i = 0; i < 5; i++) {
      const mallory = await TestClient.connect(
        `ws://127.0.0.1:${rv.port}/ws/register/mallory-${i}`,
      );
      mallory.send({
        type: "register_udp_endpoint",
        public: { ip: "127.0.0.2", port: victimPort + i },
        local: [],
        nat: { mapping: "endpoint-dependent" },
      });
      mallories.push(mallory);
    }
    const seconds = 20;
    const started = performance.now();
    while (performance.now() - started < seconds * 1000) {
      for (const m of mallories) m.send({ type: "connect", peer_id: "target" });
      await new Promise((r) => setTimeout(r, 500));
    }
    const punches = worker.lines.filter((l) => l.message === "peer punch started");
    const allowed = SEND_BUDGET.burst + (SEND_BUDGET.perMinute * seconds) / 60;
    console.log(
      `the victim got ${received} packets in ${seconds} s (at most ${allowed.toFixed(0)}); ` +
        `${punches.length} punch rounds started`,
    );
    assert.ok(received > 0, "checks were sent: paced, not silenced");
    assert.ok(received <= allowed + 1, `${received} packets`);
    assert.ok(punches.every((p) => p.strategy === "ice"), "no spray, no hard side");
  } finally {
    for (const m of mallories) await m.close().catch(() => {});
    await worker.stop();
    await rv.proc.stop();
    for (const socket of [victim, ...others]) socket.close();
    await counting;
  }
});
