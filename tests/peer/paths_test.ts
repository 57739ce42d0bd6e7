/**
 * Path choice with several working paths: the validated-path bookkeeping
 * alone, a link driven by hand (hysteresis, no roaming off a path that
 * answers, taking over from a lost path by one heard lately, the hard side
 * nominating whichever socket it kept), and the peer manager taking a
 * peer's transport packets from any path the link validated.
 */

import assert from "node:assert/strict";
import { silentLogger } from "../../lib/core/log.ts";
import { importSessionKey, sealFrame } from "../../lib/peer/frame.ts";
import { LINK_TIMING } from "../../lib/peer/link.ts";
import { PeerManager } from "../../lib/peer/manager.ts";
import {
  clearlyFaster,
  MAX_VALIDATED_PATHS,
  pathKey,
  ValidatedPaths,
} from "../../lib/peer/paths.ts";
import type { PeerTransport } from "../../lib/peer/transport.ts";
import type { UdpEndpoint } from "../../lib/peer/udp_endpoint.ts";
import type { UdpAddress } from "../../lib/protocol/messages.ts";
import { FakeClock } from "../_fake_clock.ts";
import { KEY, lone } from "../_link_sim.ts";

const P1: UdpAddress = { ip: "192.0.2.1", port: 4000 };
const P2: UdpAddress = { ip: "127.0.0.1", port: 4000 };
const SESSION = "00000000000000a1";

Deno.test("clearlyFaster() asks for 20 % and 2 ms", () => {
  for (
    const [candidate, current, want] of [
      [1, 1.5, false], // 33 % faster, but half a millisecond: jitter
      [8, 10, true],
      [8.5, 10, false], // 1.5 ms
      [79, 100, true],
      [81, 100, false], // 2 ms but 19 %
      [10, 10, false],
    ] as const
  ) {
    assert.equal(clearlyFaster(candidate, current), want, `${candidate} vs ${current}`);
  }
});

Deno.test("ValidatedPaths keeps the best round trip and last hearing of each path, bounded, oldest out", () => {
  const paths = new ValidatedPaths();
  assert.equal(paths.heard(P1, 0, 100, 30), true, "new");
  assert.equal(paths.heard(P1, 0, 200, 40), false, "known");
  assert.deepEqual(paths.get(P1, 0), { to: P1, via: 0, heardAt: 200, bestRttMs: 30 });
  paths.heard(P2, 0, 150);
  assert.equal(paths.fastest(() => true)?.to, P1, "unmeasured paths are not candidates");
  paths.heard(P2, 0, 300, 5);
  assert.equal(paths.fastest(() => true)?.to, P2);
  assert.equal(paths.fastest((p) => p.to !== P2)?.to, P1);
  assert.equal(paths.latest(250, () => true)?.to, P2);
  assert.equal(paths.latest(301, () => true), undefined);
  for (let i = 0; i < MAX_VALIDATED_PATHS; i++) {
    paths.heard({ ip: "198.51.100.1", port: i }, 3, 400 + i);
  }
  assert.equal(paths.size, MAX_VALIDATED_PATHS);
  assert.equal(paths.get(P1, 0), undefined, "the oldest heard went first");
  assert.ok(paths.keys().includes(pathKey({ ip: "198.51.100.1", port: 0 }, 3)));
  assert.equal(paths.dropSockets([3]), true);
  assert.equal(paths.size, 0);
});

/** The probe a driven link sent to `to` at its `n`th check there. */
function probeTo(h: Awaited<ReturnType<typeof lone>>, to: UdpAddress, n = 0) {
  const probes = h.sent.filter((s) =>
    s.frame.type === "probe" && s.to.ip === to.ip && s.to.port === to.port && s.via === 0
  );
  const probe = probes[n]?.frame;
  assert.ok(probe?.type === "probe", `probe ${n} to ${to.ip}`);
  return probe;
}

/** An ack to `probe` that measures `rttMs`. */
function ack(h: Awaited<ReturnType<typeof lone>>, probe: { nonce: string }, rttMs: number) {
  return h.seal({
    type: "ack",
    sessionId: SESSION,
    nonce: probe.nonce,
    time: h.clock.now() - rttMs,
  });
}

Deno.test("a round's first working path carries traffic at once; near-equal samples never move it", async () => {
  const h = await lone("endpoint-independent", "endpoint-independent", [P1, P2]);
  try {
    await h.link.receive(await ack(h, probeTo(h, P1), 30), P1, 0);
    assert.equal(h.link.directTo, "192.0.2.1:4000");
    // Checks go one every 50 ms, to each candidate in turn.
    await h.clock.tick(LINK_TIMING.probeIntervalMs);
    await h.settle();
    await h.link.receive(await ack(h, probeTo(h, P2), 31), P2, 0);
    await h.clock.tick(LINK_TIMING.probeIntervalMs * 2);
    await h.settle();
    // Later checks answer faster on both, 1 ms and 1.5 ms: jitter, not a better path.
    await h.link.receive(await ack(h, probeTo(h, P2, 1), 1), P2, 0);
    await h.link.receive(await ack(h, probeTo(h, P1, 1), 1.5), P1, 0);
    await h.clock.tick(LINK_TIMING.settleMs);
    await h.settle();
    assert.equal(h.link.directTo, "192.0.2.1:4000");
    assert.equal(h.events.filter((e) => e.type === "direct").length, 1, "one path, never moved");
  } finally {
    h.link.close();
  }
});

Deno.test("a clearly faster path of the round is taken once, when the round settles", async () => {
  const h = await lone("endpoint-independent", "endpoint-independent", [P1, P2]);
  try {
    await h.link.receive(await ack(h, probeTo(h, P1), 30), P1, 0);
    await h.clock.tick(LINK_TIMING.probeIntervalMs);
    await h.settle();
    await h.link.receive(await ack(h, probeTo(h, P2), 3), P2, 0);
    assert.equal(h.link.directTo, "192.0.2.1:4000", "not on the sample: when the round settles");
    await h.clock.tick(LINK_TIMING.settleMs);
    await h.settle();
    assert.equal(h.link.directTo, "127.0.0.1:4000");
    const direct = h.events.filter((e) => e.type === "direct");
    assert.equal(direct.length, 2);
    assert.equal(direct[1].type === "direct" && direct[1].moved, "faster");
    await h.clock.tick(LINK_TIMING.keepaliveMs);
    await h.settle();
    assert.equal(h.events.filter((e) => e.type === "direct").length, 2, "and stays");
  } finally {
    h.link.close();
  }
});

Deno.test("frames from another working path do not move a path that answers; when it stops answering, a path heard lately takes over before the relay", async () => {
  const indexed: string[][] = [];
  // deno-lint-ignore prefer-const
  let h: Awaited<ReturnType<typeof lone>>;
  h = await lone(
    "endpoint-independent",
    "endpoint-independent",
    [P1, P2],
    () => indexed.push(h.link.validatedPaths),
  );
  try {
    await h.link.receive(await ack(h, probeTo(h, P1), 5), P1, 0);
    await h.clock.tick(LINK_TIMING.settleMs);
    await h.settle();
    assert.equal(h.link.directTo, "192.0.2.1:4000");
    // The peer sends by its own choice of path: a probe and data from P2.
    const probe = {
      type: "probe",
      sessionId: SESSION,
      nonce: "00000000000000b1",
      time: 0,
    } as const;
    await h.link.receive(await h.seal(probe), P2, 0);
    await h.link.receive(
      await h.seal({ type: "data", sessionId: SESSION, seq: 0, payload: new Uint8Array([1]) }),
      P2,
      0,
    );
    assert.equal(h.link.directTo, "192.0.2.1:4000", "the path that answers stays");
    assert.deepEqual(h.link.validatedPaths.sort(), [pathKey(P1, 0), pathKey(P2, 0)].sort());
    assert.ok(indexed.length > 0, "the manager was told to index the new path");
    // Our keepalive on P1 is answered: still nothing moves.
    h.sent.length = 0;
    await h.clock.tick(LINK_TIMING.keepaliveMs);
    await h.settle();
    const keepalive = h.sent.find((s) => s.frame.type === "probe" && s.to.ip === P1.ip)?.frame;
    assert.ok(keepalive?.type === "probe");
    await h.link.receive(await h.seal({ ...keepalive, type: "ack" }), P1, 0);
    // Now P1 goes silent while the peer's frames keep coming by P2 (its NAT rebound, say).
    for (let t = 0; t < LINK_TIMING.keepaliveMs + LINK_TIMING.lostAfterMs + 500; t += 1000) {
      await h.link.receive(
        await h.seal({ ...probe, nonce: `00000000000000${(0xc0 + t / 1000).toString(16)}` }),
        P2,
        0,
      );
      assert.ok(
        h.link.directTo === "192.0.2.1:4000" || h.events.some((e) => e.type === "path_lost"),
        "no roaming before the path is lost",
      );
      h.sent.length = 0;
      await h.clock.tick(1000);
      await h.settle();
    }
    assert.ok(h.events.some((e) => e.type === "path_lost"));
    assert.equal(h.link.path, "direct", "never on the relay");
    assert.equal(h.link.directTo, "127.0.0.1:4000");
    const moved = h.events.filter((e) => e.type === "direct").at(-1);
    assert.equal(moved?.type === "direct" && moved.moved, "roamed");
    assert.ok(!h.events.some((e) => e.type === "relay"));
    assert.ok(!h.link.validatedPaths.includes(pathKey(P1, 0)), "the lost path is forgotten");
  } finally {
    h.link.close();
  }
});

Deno.test("the hard side nominates the path it keeps, also when that is its main socket", async () => {
  const easy: UdpAddress = { ip: "198.51.100.1", port: 5000 };
  const h = await lone("endpoint-dependent", "endpoint-independent", easy);
  try {
    await h.link.receive(await ack(h, probeTo(h, easy), 5), easy, 0);
    assert.equal(h.link.path, "direct");
    h.sent.length = 0;
    await h.clock.tick(LINK_TIMING.settleMs);
    await h.settle();
    assert.deepEqual(h.closed.sort(), [1, 2, 3, 4], "every extra socket closed");
    const nominations = h.sent.filter((s) => s.frame.type === "nominate");
    assert.deepEqual(
      nominations.map((s) => s.via),
      [0],
      "the kept main socket is nominated at once",
    );
    const nominated = nominations[0].frame;
    assert.ok(nominated.type === "nominate");
    await h.link.receive(await ack(h, nominated, 5), easy, 0);
    h.sent.length = 0;
    await h.clock.tick(LINK_TIMING.keepaliveMs);
    await h.settle();
    assert.deepEqual(h.sent.map((s) => [s.frame.type, s.via]), [["nominate", 0]]);
  } finally {
    h.link.close();
  }
});

/** A stand-in for the worker's UDP socket: what the manager sends is kept, what arrives is injected. */
function fakeSocket() {
  const sent: { bytes: Uint8Array; to: UdpAddress }[] = [];
  const socket = {
    local: { ip: "0.0.0.0", port: 4001, family: 4 },
    onOther: (_bytes: Uint8Array, _from: UdpAddress) => {},
    onTransport: (_bytes: Uint8Array, _from: UdpAddress): unknown => undefined,
    onStun: () => {},
    send: (bytes: Uint8Array, to: UdpAddress) => (sent.push({ bytes, to }), Promise.resolve()),
    sendPacket: (bytes: Uint8Array, to: UdpAddress) => void sent.push({ bytes, to }),
    sendWithTtl: () => Promise.resolve(true),
    close: () => Promise.resolve(),
  };
  return { socket, sent };
}

Deno.test("the peer manager takes a peer's transport packets from every path its link validated, and only those", async () => {
  const { socket } = fakeSocket();
  const delivered: { peer: string; bytes: number[] }[] = [];
  const clock = new FakeClock(0);
  const manager = new PeerManager({
    udp: socket as unknown as UdpEndpoint,
    sendToRendezvous: () => true,
    autoConnect: false,
    openingTtl: 0,
    logger: silentLogger,
    clock,
  });
  manager.setTransport({
    receive: (peer: string, bytes: Uint8Array) => {
      delivered.push({ peer, bytes: [...bytes] });
      return Promise.resolve();
    },
    introduced: () => {},
  } as unknown as PeerTransport);
  try {
    manager.handle({
      type: "punch",
      peer_id: "b",
      session_id: SESSION,
      key: KEY,
      candidates: [{ ...P1, kind: "public" }, { ...P2, kind: "public" }],
      peer_nat: "endpoint-independent",
      own_nat: "endpoint-independent",
      role: "initiator",
      delay_ms: 0,
    });
    const key = await importSessionKey(KEY);
    const probe = {
      type: "probe",
      sessionId: SESSION,
      nonce: "00000000000000e1",
      time: 0,
    } as const;
    // Authenticated frames from both of the peer's addresses validate both paths.
    for (const from of [P1, P2]) {
      socket.onOther(await sealFrame(probe, key), from);
    }
    const settled = async () => {
      for (let i = 0; i < 5; i++) await new Promise((r) => setTimeout(r, 0));
    };
    await settled();
    const transport = (n: number) => new Uint8Array([0x51, n]);
    await socket.onTransport(transport(1), P1);
    await socket.onTransport(transport(2), P2);
    await socket.onTransport(transport(3), { ip: "203.0.113.66", port: 4000 }); // never validated
    assert.deepEqual(delivered, [{ peer: "b", bytes: [1] }, { peer: "b", bytes: [2] }]);
    assert.equal(manager.strayPackets, 1);
  } finally {
    await manager.close();
  }
});

Deno.test("a round whose time is up while the peer's checks reach one of its sockets waits once for the answers in flight", async () => {
  const easy: UdpAddress = { ip: "198.51.100.1", port: 5000 };
  for (const answered of [true, false]) {
    const h = await lone("endpoint-dependent", "endpoint-independent", easy);
    try {
      // The hard side gives up 1 s after its longest strategy (15 rounds of 1 s).
      const giveUp = LINK_TIMING.hardRounds * LINK_TIMING.hardRoundMs + 1000;
      await h.clock.tick(giveUp - 200);
      await h.settle();
      // The easy side's spray reaches extra socket 3 just now: it is acked, and checked back.
      h.sent.length = 0;
      const probe = {
        type: "probe",
        sessionId: SESSION,
        nonce: "00000000000000f1",
        time: 0,
      } as const;
      await h.link.receive(await h.seal(probe), easy, 3);
      await h.settle();
      const triggered = h.sent.find((s) => s.frame.type === "probe" && s.via === 3)?.frame;
      assert.ok(triggered?.type === "probe", "a triggered check from socket 3");
      await h.clock.tick(400); // past the give-up time
      await h.settle();
      assert.ok(!h.events.some((e) => e.type === "punch_failed"), "the round waits");
      if (answered) {
        await h.link.receive(await ack(h, triggered, 600), easy, 3);
        assert.equal(h.link.path, "direct");
        assert.equal(h.link.directTo, "198.51.100.1:5000");
      } else {
        await h.clock.tick(LINK_TIMING.answerGraceMs);
        await h.settle();
        assert.equal(h.events.filter((e) => e.type === "punch_failed").length, 1, "once only");
        assert.equal(h.link.path, "relay");
      }
    } finally {
      h.link.close();
    }
  }
});

Deno.test("a triggered check whose answer is lost is sent again (100, 200, 400, 800 ms) until one comes, and no more", async () => {
  const easy: UdpAddress = { ip: "198.51.100.1", port: 5000 };
  for (const answerAfter of [2, null]) {
    const h = await lone("endpoint-dependent", "endpoint-independent", easy);
    try {
      await h.clock.tick(LINK_TIMING.openedWaitMs);
      await h.settle();
      h.sent.length = 0;
      // The peer's probe reaches extra socket 3 from a port we did not know
      // (peer-reflexive); our answer and our check back may be lost.
      const from: UdpAddress = { ip: easy.ip, port: 6000 };
      const probe = {
        type: "probe",
        sessionId: SESSION,
        nonce: "00000000000000f2",
        time: 0,
      } as const;
      await h.link.receive(await h.seal(probe), from, 3);
      await h.settle();
      const checks = () =>
        h.sent.filter((s) => s.frame.type === "probe" && s.via === 3 && s.to.port === from.port);
      assert.equal(checks().length, 1, "the triggered check");
      // The same probe again (the peer's spray or keepalive) starts no second series.
      await h.link.receive(await h.seal({ ...probe, nonce: "00000000000000f3" }), from, 3);
      await h.settle();
      assert.equal(checks().length, 1);
      for (const [i, wait] of [100, 200, 400, 800].entries()) {
        await h.clock.tick(wait);
        await h.settle();
        if (answerAfter !== null && i + 1 === answerAfter) {
          const last = checks().at(-1)!.frame as { nonce: string };
          await h.link.receive(await ack(h, last, 5), from, 3);
          assert.equal(h.link.directTo, "198.51.100.1:6000");
        }
      }
      await h.clock.tick(3000);
      await h.settle();
      assert.equal(checks().length, answerAfter === null ? 5 : answerAfter + 1);
      if (answerAfter === null) assert.equal(h.link.path, "relay");
    } finally {
      h.link.close();
    }
  }
});

Deno.test("a late answer to a round that was given up selects nothing: the peer has moved on", async () => {
  const hard: UdpAddress = { ip: "198.51.100.2", port: 2000 };
  const h = await lone("endpoint-independent", "endpoint-dependent", hard);
  try {
    // The round gives up a second after its longest strategy (the hard side's 15 rounds).
    const giveUp = Math.max(
      LINK_TIMING.maxProbes * LINK_TIMING.probeIntervalMs,
      LINK_TIMING.hardRounds * LINK_TIMING.hardRoundMs,
      LINK_TIMING.sprayMax * LINK_TIMING.sprayIntervalMs,
    ) + 1000;
    await h.clock.tick(giveUp + 10);
    await h.settle();
    assert.equal(h.events.filter((e) => e.type === "punch_failed").length, 1);
    const spray = h.sent.find((s) => s.frame.type === "probe" && s.to.port !== hard.port)!.frame;
    assert.ok(spray.type === "probe");
    // The hard side's socket answers one spray just after: too late.
    await h.link.receive(await ack(h, spray, 300), { ...hard, port: 40001 }, 0);
    assert.equal(h.link.path, "relay");
    assert.ok(!h.events.some((e) => e.type === "direct"));
  } finally {
    h.link.close();
  }
});
