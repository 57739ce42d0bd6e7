/**
 * PeerLink against a simulated network on a fake clock: two links, a UDP
 * path that can be cut, and a relay. (WebCrypto is real and asynchronous, so
 * after each clock step the test lets pending work finish before judging.)
 */

import assert from "node:assert/strict";
import { importSessionKey, MAX_FRAME_PAYLOAD, sealFrame, toBase64 } from "../../lib/peer/frame.ts";
import {
  LINK_TIMING,
  type LinkEvent,
  MAX_QUEUED_DATAGRAMS,
  openingLadder,
  PeerLink,
  type PeerLinkDeps,
} from "../../lib/peer/link.ts";
import type {
  Candidate,
  NatMapping,
  PathKind,
  PunchMessage,
  UdpAddress,
} from "../../lib/protocol/messages.ts";
import { FakeClock } from "../_fake_clock.ts";
import { KEY, LinkSim, lone } from "../_link_sim.ts";

const A: UdpAddress = { ip: "203.0.113.1", port: 1000 };
const B: UdpAddress = { ip: "203.0.113.2", port: 2000 };

interface Side {
  link: PeerLink;
  received: { text: string; path: PathKind }[];
  paths: PathKind[];
  events: LinkEvent[];
  udpSent: { to: UdpAddress; via: number; at: number }[];
  /** Low-TTL opening packets: they die in transit, nothing delivers them. */
  openings: { to: UdpAddress; via: number; at: number; ttl: number }[];
  connects: number;
  opened: number[];
  closed: number[];
}

class Net extends LinkSim {
  a: Side;
  b: Side;

  constructor(opening: { a?: boolean; b?: boolean } = {}) {
    super();
    this.a = this.#side("b", A, opening.a ?? false);
    this.b = this.#side("a", B, opening.b ?? false);
  }

  #side(peer: "a" | "b", self: UdpAddress, opening: boolean): Side {
    const side = {
      received: [],
      paths: [],
      events: [],
      udpSent: [],
      openings: [],
      connects: 0,
      opened: [],
      closed: [],
    } as unknown as Side;
    let nextVia = 1;
    side.link = new PeerLink(peer, {
      clock: this.clock,
      ...(opening
        ? {
          sendOpening: (_bytes: Uint8Array, to: UdpAddress, via: number, ttl: number) =>
            void side.openings.push({ to, via, at: this.clock.now(), ttl }),
        }
        : {}),
      sendUdp: (bytes, to, via) => {
        side.udpSent.push({ to, via, at: this.clock.now() });
        const target = to.ip === A.ip && to.port === A.port
          ? this.a
          : to.ip === B.ip && to.port === B.port
          ? this.b
          : undefined;
        if (!this.udpUp || !target) return;
        this.pending.push(target.link.receive(bytes, self, 0));
      },
      sendRelay: (bytes) => {
        const target = peer === "b" ? this.b : this.a;
        this.pending.push(target.link.receive(bytes, undefined));
      },
      openSockets: (count) => {
        const vias = Array.from({ length: count }, () => nextVia++);
        side.opened.push(...vias);
        return vias;
      },
      closeSockets: (vias) => side.closed.push(...vias),
      requestConnect: () => side.connects++,
      onMessage: (payload, path) =>
        side.received.push({ text: new TextDecoder().decode(payload), path }),
      onPath: (path) => side.paths.push(path),
      trace: (event) => side.events.push(event),
    });
    return side;
  }

  async punch(
    nat: { a?: NatMapping; b?: NatMapping } = {},
    candidates: { a?: Candidate[]; b?: Candidate[] } = {},
    sessionId = "00000000000000a1",
  ): Promise<void> {
    const base = {
      type: "punch",
      session_id: sessionId,
      key: KEY,
      delay_ms: 100,
    } as const;
    await this.a.link.punch(
      {
        ...base,
        peer_id: "b",
        candidates: candidates.a ?? [{ ...B, kind: "public" }],
        peer_nat: nat.b ?? "endpoint-independent",
        own_nat: nat.a ?? "endpoint-independent",
        role: "initiator",
      } satisfies PunchMessage,
    );
    await this.b.link.punch(
      {
        ...base,
        peer_id: "a",
        candidates: candidates.b ?? [{ ...A, kind: "public" }],
        peer_nat: nat.a ?? "endpoint-independent",
        own_nat: nat.b ?? "endpoint-independent",
        role: "responder",
      } satisfies PunchMessage,
    );
  }

  close(): void {
    this.a.link.close();
    this.b.link.close();
  }
}

const text = (s: string) => new TextEncoder().encode(s);

/** Dependencies that do nothing, for a link driven by hand. */
function inert(overrides: Partial<PeerLinkDeps> = {}): PeerLinkDeps {
  return {
    clock: new FakeClock(0),
    sendUdp: () => {},
    sendRelay: () => {},
    openSockets: () => [],
    closeSockets: () => {},
    requestConnect: () => {},
    onMessage: () => {},
    onPath: () => {},
    ...overrides,
  };
}

/** An introduction to session a1 under KEY, without candidates. */
function introduction(overrides: Partial<PunchMessage> = {}): PunchMessage {
  return {
    type: "punch",
    peer_id: "a",
    session_id: "00000000000000a1",
    key: KEY,
    candidates: [],
    peer_nat: null,
    own_nat: null,
    role: "responder",
    delay_ms: 0,
    ...overrides,
  };
}

Deno.test("PeerLink relays datagrams from the introduction, then sends them direct, each delivered once", async () => {
  const net = new Net();
  try {
    net.a.link.send(text("m0")); // before any introduction: queued, and a connect is asked for
    assert.equal(net.a.connects, 1);
    await net.punch();
    for (let i = 1; i < 5; i++) net.a.link.send(text(`m${i}`));
    await net.settle();
    assert.deepEqual(net.b.received.map((m) => m.path), Array(5).fill("relay"));
    await net.tick(400);
    assert.equal(net.a.link.path, "direct");
    assert.equal(net.b.link.path, "direct");
    assert.deepEqual(net.a.paths, ["direct"]);
    for (let i = 5; i < 10; i++) net.a.link.send(text(`m${i}`));
    await net.tick(50);
    // Datagrams: the simulated network may reorder them, never duplicate them.
    assert.deepEqual(
      net.b.received.map((m) => m.text).sort(),
      Array.from({ length: 10 }, (_, i) => `m${i}`),
    );
    const direct = net.b.received.filter((m) => m.path === "direct").map((m) => m.text).sort();
    assert.deepEqual(direct, ["m5", "m6", "m7", "m8", "m9"]);
    assert.deepEqual(net.a.link.stats.sent, { direct: 5, relay: 5 });
    assert.equal(net.b.link.stats.dropped, 0);
  } finally {
    net.close();
  }
});

Deno.test("PeerLink drops replayed datagrams and ones older than its window, from either path", async () => {
  const received: string[] = [];
  const link = new PeerLink(
    "a",
    inert({ onMessage: (payload) => received.push(new TextDecoder().decode(payload)) }),
  );
  try {
    await link.punch(introduction());
    const key = await importSessionKey(KEY);
    const datagram = (seq: number) =>
      sealFrame(
        { type: "data", sessionId: "00000000000000a1", seq, payload: text(`d${seq}`) },
        key,
      );
    const first = await datagram(0);
    await link.receive(first, undefined);
    await link.receive(first, undefined); // replayed through the relay
    await link.receive(first, A, 0); // and over UDP
    await link.receive(await datagram(70), undefined);
    await link.receive(await datagram(3), undefined); // older than the window (64 behind 70)
    await link.receive(await datagram(69), A, 0); // reordered, within the window
    await link.receive(await datagram(69), A, 0);
    assert.deepEqual(received, ["d0", "d70", "d69"]);
    assert.equal(link.stats.dropped, 4);
  } finally {
    link.close();
  }
});

Deno.test("PeerLink sends datagrams over the relay once the direct path dies, and asks to upgrade later", async () => {
  const net = new Net();
  try {
    await net.punch();
    await net.tick(400);
    assert.equal(net.a.link.path, "direct");
    net.udpUp = false;
    await net.tick(LINK_TIMING.keepaliveMs + LINK_TIMING.lostAfterMs + 500, 50);
    assert.equal(net.a.link.path, "relay");
    assert.ok(net.a.events.some((e) => e.type === "path_lost"));
    net.a.link.send(text("after the outage"));
    await net.settle();
    assert.deepEqual(net.b.received, [{ text: "after the outage", path: "relay" }]);
    const connects = net.a.connects;
    await net.tick(LINK_TIMING.upgradeRetryMs, 500);
    assert.equal(net.a.connects, connects + 1, "asks for a new introduction");
  } finally {
    net.close();
  }
});

Deno.test("PeerLink keeps only the newest datagrams while it waits for its first introduction", async () => {
  const net = new Net();
  try {
    for (let i = 0; i < MAX_QUEUED_DATAGRAMS + 4; i++) net.a.link.send(text(`q${i}`));
    assert.equal(net.a.connects, 1, "one connect asked for");
    assert.equal(net.a.link.stats.dropped, 4);
    await net.punch();
    await net.settle();
    assert.deepEqual(
      net.b.received.map((m) => m.text).sort(),
      Array.from({ length: MAX_QUEUED_DATAGRAMS }, (_, i) => `q${i + 4}`).sort(),
    );
    assert.throws(() => net.a.link.send(new Uint8Array(MAX_FRAME_PAYLOAD + 1)), RangeError);
  } finally {
    net.close();
  }
});

Deno.test("PeerLink keeps a relayed frame that arrives while its introduction is being taken in", async () => {
  // The rendezvous sends `punch` to both sides before it relays anything, so
  // the first relayed frame can reach a link whose session key is still
  // being imported; it must wait for the key, not be dropped (and wait for
  // the relay's retransmission timeout).
  const received: string[] = [];
  const link = new PeerLink(
    "a",
    inert({ onMessage: (payload) => received.push(new TextDecoder().decode(payload)) }),
  );
  try {
    const frame = await sealFrame(
      { type: "data", sessionId: "00000000000000a1", seq: 0, payload: text("first") },
      await importSessionKey(KEY),
    );
    const introduced = link.punch(introduction());
    await Promise.all([introduced, link.receive(frame, undefined)]);
    assert.deepEqual(received, ["first"]);
  } finally {
    link.close();
  }
});

Deno.test("PeerLink reports an introduction whose key it cannot use, and goes on", async () => {
  const events: LinkEvent[] = [];
  const connects: number[] = [];
  const link = new PeerLink(
    "a",
    inert({ requestConnect: () => connects.push(1), trace: (event) => events.push(event) }),
  );
  try {
    await link.punch(introduction({ key: "A".repeat(44) })); // decodes to 33 bytes
    assert.deepEqual(events.map((e) => e.type), ["bad_introduction"]);
    assert.deepEqual(link.sessionIds, []);
    link.send(text("still usable")); // queued until a good introduction
    assert.equal(connects.length, 1);
  } finally {
    link.close();
  }
});

Deno.test("PeerLink drops frames it cannot authenticate", async () => {
  const net = new Net();
  try {
    await net.punch();
    const stranger = new PeerLink("x", {
      clock: net.clock,
      sendUdp: () => {},
      sendRelay: (bytes) => net.pending.push(net.b.link.receive(bytes, undefined)),
      openSockets: () => [],
      closeSockets: () => {},
      requestConnect: () => {},
      onMessage: () => {},
      onPath: () => {},
    });
    await stranger.punch({
      type: "punch",
      peer_id: "a",
      session_id: "00000000000000a1", // the right session id, the wrong key
      key: toBase64(crypto.getRandomValues(new Uint8Array(32))),
      candidates: [],
      peer_nat: null,
      own_nat: null,
      role: "initiator",
      delay_ms: 0,
    });
    stranger.send(text("forged"));
    await net.settle();
    assert.deepEqual(net.b.received, []);
    stranger.close();
  } finally {
    net.close();
  }
});

Deno.test("PeerLink probes are paced and bounded when the peer never answers", async () => {
  const net = new Net();
  try {
    net.udpUp = false;
    await net.punch();
    await net.tick(LINK_TIMING.maxProbes * LINK_TIMING.probeIntervalMs + 3000, 50);
    const probes = net.a.udpSent.length;
    assert.ok(probes <= LINK_TIMING.maxProbes, `${probes} probes`);
    assert.ok(net.a.events.some((e) => e.type === "punch_failed"));
    await net.tick(5000, 500);
    assert.equal(net.a.udpSent.length, probes, "no probe after giving up");
  } finally {
    net.close();
  }
});

Deno.test("PeerLink picks its strategy from both NATs and bounds each", async () => {
  const net = new Net();
  try {
    net.udpUp = false;
    await net.punch({ a: "endpoint-dependent", b: "endpoint-independent" });
    await net.tick(20_000, 100);
    assert.equal(net.a.events.find((e) => e.type === "punch")?.strategy, "hard-side");
    assert.equal(net.b.events.find((e) => e.type === "punch")?.strategy, "easy-side");
    assert.equal(net.a.opened.length, LINK_TIMING.hardSockets);
    assert.deepEqual(
      net.a.closed.sort((x, y) => x - y),
      net.a.opened,
      "every extra socket closed again",
    );
    const hardProbes = net.a.udpSent.filter((s) => s.via !== 0).length;
    assert.ok(hardProbes <= LINK_TIMING.hardSockets * LINK_TIMING.hardRounds, `${hardProbes}`);
    const spray = net.b.udpSent.filter((s) => s.to.port !== A.port).length;
    assert.ok(spray > 0 && spray <= LINK_TIMING.sprayMax, `${spray} spray probes`);
    assert.ok(net.b.udpSent.every((s) => s.to.ip === A.ip), "spray only at the peer's address");
  } finally {
    net.close();
  }
  // A side without NAT needs neither sockets nor a spray: plain checks, both ways.
  const open = new Net();
  try {
    await open.punch({ a: "endpoint-dependent", b: "no-nat" });
    await open.tick(2000, 50);
    assert.equal(open.a.events.find((e) => e.type === "punch")?.strategy, "ice");
    assert.equal(open.b.events.find((e) => e.type === "punch")?.strategy, "ice");
    assert.equal(open.a.opened.length, 0, "no extra sockets toward a peer without NAT");
    assert.equal(open.a.link.path, "direct");
  } finally {
    open.close();
  }
  const both = new Net();
  try {
    await both.punch({ a: "endpoint-dependent", b: "endpoint-dependent" });
    await both.tick(1000, 100);
    assert.equal(both.a.events.find((e) => e.type === "punch")?.strategy, "both-hard");
    assert.equal(both.a.udpSent.length, 0, "no public probes between two hard NATs");
    both.a.link.send(text("still delivered"));
    await both.settle();
    assert.deepEqual(both.b.received, [{ text: "still delivered", path: "relay" }]);
  } finally {
    both.close();
  }
});

const SESSION = "00000000000000a1";

Deno.test("PeerLink, hard side: keeps one socket, nominates it, and never moves onto a closed one", async () => {
  const easy: UdpAddress = { ip: "198.51.100.1", port: 5000 };
  const h = await lone("endpoint-dependent", "endpoint-independent", easy);
  try {
    // The easy side's ack to the probe our extra socket 3 sent selects via 3.
    const probe3 = h.sent.find((s) => s.via === 3 && s.frame.type === "probe")!.frame;
    assert.ok(probe3.type === "probe");
    await h.link.receive(await h.seal({ ...probe3, type: "ack" }), easy, 3);
    assert.equal(h.link.path, "direct");
    h.sent.length = 0;
    await h.clock.tick(LINK_TIMING.settleMs);
    await h.settle();
    assert.deepEqual(h.closed.sort(), [1, 2, 4], "every other extra socket closed");
    const nominations = h.sent.filter((s) => s.frame.type === "nominate");
    assert.equal(nominations.length, 1, "the kept socket is nominated at once");
    assert.equal(nominations[0].via, 3);
    const nominated = nominations[0].frame;
    assert.ok(nominated.type === "nominate");
    await h.link.receive(await h.seal({ ...nominated, type: "ack" }), easy, 3);
    // A probe received on socket 2 before it closed, handled after: no roaming there.
    const late = { type: "probe", sessionId: SESSION, nonce: "00000000000000bb", time: 0 } as const;
    await h.link.receive(await h.seal(late), { ...easy, port: 5001 }, 2);
    assert.equal(h.link.directTo, "198.51.100.1:5000");
    assert.deepEqual(
      h.events.filter((e) => e.type === "direct").map((e) => e.type === "direct" && e.via),
      [3],
    );
    // Keepalives from the kept socket nominate too.
    await h.settle();
    h.sent.length = 0;
    await h.clock.tick(LINK_TIMING.keepaliveMs);
    await h.settle();
    assert.deepEqual(h.sent.map((s) => [s.frame.type, s.via]), [["nominate", 3]]);
  } finally {
    h.link.close();
  }
});

Deno.test("PeerLink, easy side: follows the hard side's nomination over its own choice", async () => {
  const hard: UdpAddress = { ip: "198.51.100.2", port: 2000 };
  const e = await lone("endpoint-independent", "endpoint-dependent", hard);
  try {
    // Our spray reached the hard side's socket at port 40001 first: we select it...
    const spray = e.sent.find((s) => s.frame.type === "probe" && s.to.port !== hard.port)!;
    assert.ok(spray.frame.type === "probe");
    const at40001 = { ...hard, port: 40001 };
    await e.link.receive(await e.seal({ ...spray.frame, type: "ack" }), at40001, 0);
    assert.equal(e.link.directTo, "198.51.100.2:40001");
    // ...but the hard side kept the socket behind port 40002 and nominates it.
    e.sent.length = 0;
    const at40002 = { ...hard, port: 40002 };
    const nominate = {
      type: "nominate",
      sessionId: SESSION,
      nonce: "00000000000000cc",
      time: 0,
    } as const;
    await e.link.receive(await e.seal(nominate), at40002, 0);
    await e.settle();
    assert.equal(e.link.directTo, "198.51.100.2:40002");
    assert.ok(e.sent.some((s) => s.frame.type === "ack" && s.to.port === 40002), "acked");
    const direct = e.events.filter((ev) => ev.type === "direct");
    assert.equal(direct.at(-1)?.type === "direct" && direct.at(-1)?.nominated, true);
    // Probing stopped; a late probe or ack from another port no longer moves the path.
    e.sent.length = 0;
    await e.clock.tick(500);
    await e.settle();
    assert.ok(!e.sent.some((s) => s.to.port !== 40002), "no more checks elsewhere");
    const late = { type: "probe", sessionId: SESSION, nonce: "00000000000000dd", time: 0 } as const;
    await e.link.receive(await e.seal(late), { ...hard, port: 40003 }, 0);
    await e.link.receive(
      await e.seal({ ...spray.frame, type: "ack" }),
      { ...hard, port: 40004 },
      0,
    );
    assert.equal(e.link.directTo, "198.51.100.2:40002");
  } finally {
    e.link.close();
  }
});

Deno.test("opening packets go first; full-TTL checks toward a peer wait for its `opened`", async () => {
  const net = new Net({ a: true, b: true });
  try {
    await net.punch();
    await net.tick(2000);
    for (const [me, peer] of [[net.a, net.b], [net.b, net.a]]) {
      assert.ok(me.openings.length >= 1, "an opening packet toward the candidate");
      assert.equal(me.openings[0].via, 0);
      const checks = me.events.find((e) => e.type === "checks");
      assert.deepEqual(checks && { ...checks, opened_ms: 0 }, {
        type: "checks",
        after: "peer_opened",
        opened_ms: 0,
      });
      // Stages of rising TTL: ours at 3 only once the peer's at 2 were out.
      assert.deepEqual([...new Set(me.openings.map((o) => o.ttl))], [2, 3]);
      const firstThree = Math.min(...me.openings.filter((o) => o.ttl === 3).map((o) => o.at));
      const lastPeerTwo = Math.max(...peer.openings.filter((o) => o.ttl === 2).map((o) => o.at));
      assert.ok(firstThree >= lastPeerTwo, "TTL 3 after the peer's TTL 2");
      // Nothing at full TTL left before the peer's opening packets had.
      const lastPeerOpening = Math.max(...peer.openings.map((o) => o.at));
      assert.ok(me.udpSent.every((s) => s.at >= lastPeerOpening), "full TTL only after");
      assert.equal(me.link.path, "direct");
    }
  } finally {
    net.close();
  }
});

Deno.test("a peer without opening packets says `opened` once, and its checks reach the other side at once", async () => {
  const net = new Net({ a: true, b: false });
  try {
    await net.punch();
    await net.tick(LINK_TIMING.openedWaitMs + 500, 50);
    // b probes at once, and says `opened` (last) once, so that a hard side
    // would take its sockets; a answers b's probes (triggered checks) and
    // begins its own checks on that `opened`, or the probes, or the wait.
    const checksOf = (side: Side) => {
      const e = side.events.find((e) => e.type === "checks");
      return e?.type === "checks" ? e.after : undefined;
    };
    assert.equal(checksOf(net.b), "no_opening");
    assert.ok(
      [undefined, "timeout", "peer_opened"].includes(checksOf(net.a)),
      String(checksOf(net.a)),
    );
    assert.equal(net.a.link.path, "direct");
    assert.equal(net.b.link.path, "direct");
  } finally {
    net.close();
  }
});

Deno.test("the hard side opens its mappings from every extra socket at a low TTL, never at full TTL", async () => {
  const net = new Net({ a: true, b: true });
  try {
    await net.punch({ a: "endpoint-dependent", b: "endpoint-independent" });
    await net.tick(2500, 50);
    const extra = net.a.openings.filter((o) => o.via !== 0);
    assert.ok(extra.length >= LINK_TIMING.hardSockets, `${extra.length} openings from extras`);
    assert.equal(new Set(extra.map((o) => o.via)).size, LINK_TIMING.hardSockets);
    assert.ok(extra.every((o) => o.to.ip === B.ip && o.to.port === B.port));
    assert.equal(net.a.udpSent.filter((s) => s.via !== 0 && s.to.port === B.port).length, 0);
  } finally {
    net.close();
  }
});

Deno.test("openingLadder: TTL 2 up to the configured top, always at least one stage", () => {
  assert.deepEqual(openingLadder(3), [2, 3]);
  assert.deepEqual(openingLadder(5), [2, 3, 4, 5]);
  assert.deepEqual(openingLadder(2), [2]);
  assert.deepEqual(openingLadder(1), [1]);
});

Deno.test("a second introduction while direct closes that round's sockets when it runs out, and keeps the path", async () => {
  const net = new Net();
  try {
    await net.punch({ a: "endpoint-dependent", b: "endpoint-independent" });
    await net.tick(3000, 50);
    const path = net.a.link.direct;
    assert.ok(path, "direct");
    const firstRound = net.a.opened.length;
    await net.punch({ a: "endpoint-dependent", b: "endpoint-independent" }, {}, "00000000000000b2");
    await net.tick(LINK_TIMING.hardRounds * LINK_TIMING.hardRoundMs + 3000, 100);
    const second = net.a.opened.slice(firstRound);
    assert.equal(second.length, LINK_TIMING.hardSockets, "the second round opened its own");
    const closed = new Set(net.a.closed);
    assert.ok(second.every((via) => closed.has(via)), "and closed them all when it ran out");
    assert.ok(!closed.has(net.a.link.direct!.via), "the path's socket stays open");
    assert.deepEqual(net.a.link.direct, path, "the path did not move");
  } finally {
    net.close();
  }
});

Deno.test("a peer-reflexive address (a remapped port no candidate named) still ends in a direct path, with opening packets on", async () => {
  const net = new Net({ a: true, b: true });
  try {
    // a was told a port b's NAT no longer uses; b's probes come from the real one.
    const stale: Candidate = { ip: B.ip, port: B.port + 999, kind: "public" };
    await net.punch({}, { a: [stale] });
    await net.tick(3000, 50);
    assert.equal(net.a.link.directTo, `${B.ip}:${B.port}`, "found through b's own probes");
    assert.equal(net.b.link.path, "direct");
  } finally {
    net.close();
  }
});
