/**
 * The worker-wide bounds on punching, on a real UDP socket and a fake clock:
 * one pool of extra sockets that every hard-side round shares (a round that
 * got none takes them as they free), and one pace for every link's checks,
 * sprays and openings, under which held-back rounds slow down instead of
 * waking as often as ever.
 */
import assert from "node:assert/strict";
import { silentLogger } from "../../lib/core/log.ts";
import { importSessionKey, sealFrame, toBase64 } from "../../lib/peer/frame.ts";
import { PeerManager } from "../../lib/peer/manager.ts";
import { EXTRA_SOCKETS, PUNCH_PACE } from "../../lib/peer/punch_sockets.ts";
import { UdpEndpoint } from "../../lib/peer/udp_endpoint.ts";
import type { NatMapping } from "../../lib/protocol/messages.ts";
import { FakeClock } from "../_fake_clock.ts";

/** A manager on a real loopback socket, and a socket that counts what reaches it. */
function setup(maxExtraSockets?: number) {
  const clock = new FakeClock(0);
  const udp = UdpEndpoint.bind({ hostname: "127.0.0.1", port: 0 });
  const manager = new PeerManager({
    udp,
    sendToRendezvous: () => true,
    logger: silentLogger,
    autoConnect: false,
    openingTtl: 0, // checks at once, without the opening stages
    maxExtraSockets,
    clock,
  });
  // What leaves the worker's socket, counted where it is sent.
  let sent = 0;
  const send = udp.send.bind(udp);
  udp.send = (bytes, to) => {
    sent++;
    return send(bytes, to);
  };
  manager.ownEndpointReported({ ip: "127.0.0.1", port: udp.local.port });
  const sink = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  let received = 0;
  const counting = (async () => {
    try {
      for await (const _ of sink) received++;
    } catch {
      // closed
    }
  })();
  const punch = (peerId: string, n: number, ownNat: NatMapping) =>
    manager.handle({
      type: "punch",
      peer_id: peerId,
      session_id: n.toString(16).padStart(16, "0"),
      key: toBase64(new Uint8Array(32).fill(n % 256)),
      candidates: [{
        ip: "127.0.0.1",
        port: (sink.addr as Deno.NetAddr).port,
        kind: "public",
        vouched: true,
      }],
      peer_nat: "endpoint-independent",
      own_nat: ownNat,
      role: "responder",
      delay_ms: 0,
    });
  /** The peer's `opened` of round 0, through the relay: it is live. */
  const opened = async (peerId: string, n: number) => {
    const key = await importSessionKey(toBase64(new Uint8Array(32).fill(n % 256)));
    const frame = await sealFrame({
      type: "opened",
      sessionId: n.toString(16).padStart(16, "0"),
      ttl: 1,
      last: true,
      round: 0,
      time: 0,
    }, key);
    await manager.handle({ type: "relayed", from: peerId, data: toBase64(frame) });
    await clock.tick(10);
  };
  return {
    clock,
    manager,
    punch,
    opened,
    received: () => received,
    sent: () => sent,
    close: async () => {
      await manager.close();
      udp.close();
      sink.close();
      await counting;
    },
  };
}

Deno.test("hard-side rounds take sockets only once their peer is live, from one pool: the second waits for the first's", async () => {
  const t = setup(40);
  try {
    const pool = 40 - EXTRA_SOCKETS.rerollReserve;
    for (const [i, id] of ["a", "b", "c"].entries()) await t.punch(id, i + 1, "endpoint-dependent");
    await t.clock.tick(1500);
    assert.equal(t.manager.extraSockets, 0, "members that only ask for introductions hold none");
    await t.opened("a", 1);
    assert.equal(t.manager.extraSockets, pool, "a's round takes what the pool has");
    await t.opened("b", 2);
    assert.equal(t.manager.extraSockets, pool, "b's gets none of its own");
    // a leaves: its round's sockets close, and b's next hard round takes them.
    t.manager.handle({ type: "peer_left", peer_id: "a" });
    assert.equal(t.manager.extraSockets, 0);
    await t.clock.tick(1000);
    assert.equal(t.manager.extraSockets, pool, "b took the freed sockets");
  } finally {
    await t.close();
  }
});

Deno.test("300 rounds at once send at most the worker's pace, and the rounds held back slow down", async () => {
  const t = setup();
  try {
    const rounds = 300;
    for (let n = 1; n <= rounds; n++) await t.punch(`p${n}`, n, "endpoint-independent");
    // One second of checks: each round alone would send 20, 6,000 in all.
    for (let ms = 0; ms < 1000; ms += 10) await t.clock.tick(10);
    const limit = PUNCH_PACE.burst + PUNCH_PACE.perSecond;
    const sent = await settled(() => t.sent());
    console.log(
      `${sent} packets sent, ${t.received()} reached the peer's socket, ${t.manager.pacedOut} held back`,
    );
    assert.ok(t.received() > 0);
    assert.ok(sent <= limit, `${sent} sent in 1 s`);
    assert.ok(t.manager.pacedOut > 0, "the pace held some back");
    // Held back, a round waits longer before its next try: far fewer tries than 6,000.
    assert.ok(sent + t.manager.pacedOut < rounds * 20, `${sent + t.manager.pacedOut} tries`);
  } finally {
    await t.close();
  }
});

/**
 * What `count` says once it has not changed for 200 ms (the checks of that
 * simulated second are sealed asynchronously; the fake clock starts no more).
 */
async function settled(count: () => number): Promise<number> {
  let last = -1;
  let since = performance.now();
  while (performance.now() - since < 200) {
    if (count() !== last) [last, since] = [count(), performance.now()];
    await new Promise((r) => setTimeout(r, 20));
  }
  return last;
}
