/**
 * Handshakes are taken each on its own: QUIC Initials that never finish (a
 * group member that stops answering, or means to) neither delay a real
 * peer's connection nor hold their slot past the handshake timeout.
 */
import assert from "node:assert/strict";
import { Logger } from "../../lib/core/log.ts";
import { Identity } from "../../lib/protocol/identity.ts";
import { HANDSHAKE_LIMITS, PeerTransport } from "../../lib/peer/transport.ts";
import { waitFor } from "../_helpers.ts";

Deno.test("Initials that never finish delay no real peer's connection, and are given up after the handshake timeout", async () => {
  const names = ["v", "l", "x1", "x2", "x3"] as const;
  type Name = typeof names[number];
  const ids = Object.fromEntries(
    await Promise.all(names.map(async (n) => [n, await Identity.generate()] as const)),
  ) as Record<Name, Identity>;
  const made = {} as Record<Name, PeerTransport>;
  const attackers = new Set<string>(["x1", "x2", "x3"]);
  /** Packets from each attacker that reached the victim (only its first is let through). */
  const letThrough = new Map<string, number>();
  const accepted: string[] = [];
  const deliver = (from: Name, to: string, packet: Uint8Array) => {
    if (attackers.has(from) && to === "v") {
      const n = letThrough.get(from) ?? 0;
      if (n >= 1) return; // the attacker goes silent after its Initial
      letThrough.set(from, n + 1);
    }
    if (from === "v" && attackers.has(to)) return; // and never hears the answer
    void made[to as Name]?.receive(from, packet);
  };
  for (const me of names) {
    made[me] = await PeerTransport.start({
      workerId: me,
      identity: ids[me],
      logger: new Logger({ sink: () => {} }),
      sendPacket: (to, packet) => deliver(me, to, packet.slice(1)),
      peer: (id) =>
        id in made && id !== me
          ? { key: ids[id as Name].publicKey, transport: made[id as Name].credentials }
          : undefined,
      onConnection: (peer) => void accepted.push(peer),
    });
  }
  try {
    // Three group members start a handshake with v and go silent.
    const stuck = ["x1", "x2", "x3"].map((x) => made[x as Name].dial("v", 8000).catch(() => null));
    await waitFor(() => letThrough.size === 3, "the attackers' Initials to reach v");
    // A real peer connects meanwhile: it must not wait for them.
    const started = performance.now();
    const conn = await made.l.dial("v", 15_000);
    const ms = performance.now() - started;
    console.log(`a real peer connected in ${ms.toFixed(0)} ms beside 3 unfinished handshakes`);
    assert.ok(ms < 5000, `took ${ms} ms`);
    await waitFor(() => accepted.includes("l"), "v to take l's connection");
    conn.conn.close({ closeCode: 0, reason: "" });
    // The unfinished ones are given up after the handshake timeout.
    await waitFor(
      () => made.v.handshakes.timedOut === 3,
      "the stuck handshakes to time out",
      HANDSHAKE_LIMITS.timeoutMs + 5000,
    );
    assert.deepEqual(accepted, ["l"]);
    await Promise.all(stuck); // the attackers' own dials give up
  } finally {
    await Promise.all(names.map((n) => made[n]?.close()));
  }
});
