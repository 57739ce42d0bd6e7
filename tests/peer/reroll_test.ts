/**
 * Rerolls: a round that fails is followed by one between fresh sockets.
 * Two PeerLinks on a fake clock behind simulated NATs that map each socket
 * to a public address and let in only what comes from an address the socket
 * has sent to (opening packets included: they make the mapping and die in
 * transit). A "moved" mapping — what a Linux NAT's clash does to a socket's
 * later flows — is a main socket whose real public port is not the one its
 * candidate names.
 */

import assert from "node:assert/strict";
import { importSessionKey, sealFrame, toBase64 } from "../../lib/peer/frame.ts";
import { LINK_TIMING, type LinkEvent, PeerLink } from "../../lib/peer/link.ts";
import type { Candidate, PunchMessage, UdpAddress } from "../../lib/protocol/messages.ts";
import { LinkSim } from "../_link_sim.ts";

const KEY = toBase64(crypto.getRandomValues(new Uint8Array(32)));
const SESSION = "00000000000000c3";
const key = (a: UdpAddress) => `${a.ip}:${a.port}`;

interface Side {
  name: "a" | "b";
  ip: string;
  link: PeerLink;
  /** Public address of each open socket, by `via`. */
  sockets: Map<number, UdpAddress>;
  /** Addresses each socket has sent to (its NAT lets replies from them in). */
  sentTo: Map<number, Set<string>>;
  events: LinkEvent[];
  received: string[];
  rerollSockets: number[];
  closed: number[];
  connects: number;
  /** Relayed frames this side sent, as bytes (for replay attacks). */
  relayed: Uint8Array[];
}

class NatNet extends LinkSim {
  /** Opening packets in the order they left: side and socket. */
  openings: { side: "a" | "b"; via: number }[] = [];
  a: Side;
  b: Side;

  /** How long a reroll's fresh socket takes (its STUN answer), on the fake clock. */
  rerollSocketMs = 0;

  constructor(options: { rerolls?: { a?: boolean; b?: boolean } } = {}) {
    super();
    this.a = this.#side("a", "198.51.100.1", options.rerolls?.a ?? true);
    this.b = this.#side("b", "198.51.100.2", options.rerolls?.b ?? true);
  }

  #peerOf(side: Side): Side {
    return side === this.a ? this.b : this.a;
  }

  #deliver(from: Side, via: number, to: UdpAddress, bytes: Uint8Array): void {
    const source = from.sockets.get(via);
    if (!source) return;
    from.sentTo.get(via)!.add(key(to));
    if (!this.udpUp) return;
    const target = this.#peerOf(from);
    for (const [v, address] of target.sockets) {
      if (key(address) !== key(to)) continue;
      if (!target.sentTo.get(v)!.has(key(source))) return; // filtered by the peer's NAT
      this.pending.push(target.link.receive(bytes, source, v));
    }
  }

  #side(name: "a" | "b", ip: string, rerolls: boolean): Side {
    const side: Side = {
      name,
      ip,
      sockets: new Map([[0, { ip, port: 1001 }]]),
      sentTo: new Map([[0, new Set()]]),
      events: [],
      received: [],
      rerollSockets: [],
      closed: [],
      connects: 0,
      relayed: [],
    } as unknown as Side;
    let nextVia = 1;
    const open = () => {
      const via = nextVia++;
      side.sockets.set(via, { ip, port: 3000 + via });
      side.sentTo.set(via, new Set());
      return via;
    };
    side.link = new PeerLink(name === "a" ? "b" : "a", {
      clock: this.clock,
      sendUdp: (bytes, to, via) => this.#deliver(side, via, to, bytes),
      // Opening packets make the mapping and die in transit.
      sendOpening: (_bytes, to, via) => {
        this.openings.push({ side: name, via });
        side.sentTo.get(via)?.add(key(to));
      },
      sendRelay: (bytes) => {
        side.relayed.push(bytes);
        this.pending.push(this.#peerOf(side).link.receive(bytes, undefined));
      },
      openSockets: (count) => Array.from({ length: count }, open),
      closeSockets: (vias) => {
        for (const via of vias) side.sockets.delete(via);
        side.closed.push(...vias);
      },
      ...(rerolls
        ? {
          openRerollSocket: () => {
            const via = open();
            side.rerollSockets.push(via);
            const candidates: Candidate[] = [{ ...side.sockets.get(via)!, kind: "public" }];
            if (this.rerollSocketMs === 0) return Promise.resolve({ via, candidates });
            return new Promise((resolve) =>
              this.clock.setTimeout(() => resolve({ via, candidates }), this.rerollSocketMs)
            );
          },
        }
        : {}),
      requestConnect: () => side.connects++,
      onMessage: (payload) => side.received.push(new TextDecoder().decode(payload)),
      onPath: () => {},
      trace: (event) => side.events.push(event),
    });
    return side;
  }

  override tick(ms: number, step = 50): Promise<void> {
    return super.tick(ms, step);
  }

  /**
   * Introduces the two; `moved` names a side whose main socket's mapping
   * moved since it was reported (its candidate says port 1000, its packets
   * leave from 1001).
   */
  async punch(moved: "a" | "b" | "none"): Promise<void> {
    const candidate = (side: Side): Candidate => ({
      ip: side.ip,
      port: moved === side.name ? 1000 : 1001,
      kind: "public",
    });
    for (const [me, peer] of [[this.a, this.b], [this.b, this.a]]) {
      await me.link.punch(
        {
          type: "punch",
          peer_id: peer.name,
          session_id: SESSION,
          key: KEY,
          candidates: [candidate(peer)],
          peer_nat: "endpoint-independent",
          own_nat: "endpoint-independent",
          role: me === this.a ? "initiator" : "responder",
          delay_ms: 100,
        } satisfies PunchMessage,
      );
    }
  }

  close(): void {
    this.a.link.close();
    this.b.link.close();
  }
}

const text = (s: string) => new TextEncoder().encode(s);
const ofType = <T extends LinkEvent["type"]>(side: Side, type: T) =>
  side.events.filter((e): e is Extract<LinkEvent, { type: T }> => e.type === type);

Deno.test("a round that fails against a moved mapping is rerolled from fresh sockets, and the new round goes direct", async () => {
  const net = new NatNet();
  try {
    await net.punch("a");
    for (let i = 0; i < 5; i++) net.a.link.send(text(`m${i}`));
    await net.tick(LINK_TIMING.rerollIceMs + 2000);
    for (const side of [net.a, net.b]) {
      assert.deepEqual(ofType(side, "punch_failed").map((e) => e.round), [0], side.name);
      // A first round from the main socket that ran its course: the
      // worker's other first rounds from it are suspect too (both sides,
      // whichever's timer fired first).
      assert.equal(ofType(side, "punch_failed")[0].suspect, true, side.name);
      assert.deepEqual(ofType(side, "reroll").map((e) => e.round), [1], side.name);
      assert.equal(side.link.path, "direct", side.name);
      assert.equal(side.link.direct!.via, side.rerollSockets[0], "on the fresh socket");
      assert.equal(side.link.stats.rerolls, 1);
      const direct = ofType(side, "direct");
      assert.equal(direct.at(-1)!.round, 1);
    }
    assert.equal(net.a.link.directTo, `${net.b.ip}:${3000 + net.b.rerollSockets[0]}`);
    // The relay carried the messages meanwhile; the direct path the rest.
    for (let i = 5; i < 10; i++) net.a.link.send(text(`m${i}`));
    await net.tick(500);
    assert.deepEqual(net.b.received.toSorted(), Array.from({ length: 10 }, (_, i) => `m${i}`));
    // Keepalives from a fresh socket are plain probes (only the hard side's extras nominate).
    await net.tick(LINK_TIMING.keepaliveMs * 2 + 500, 100);
    assert.equal(net.a.link.path, "direct", "the path holds past keepalives");
    assert.equal(ofType(net.a, "path_lost").length, 0);
  } finally {
    net.close();
  }
});

Deno.test("rerolls are bounded: after three failed ones the link stays on the relay and asks for a new introduction later", async () => {
  const net = new NatNet();
  try {
    net.udpUp = false;
    await net.punch("none");
    net.a.link.send(text("over the relay"));
    await net.tick((LINK_TIMING.rerolls + 1) * (LINK_TIMING.rerollIceMs + 1000) + 12_000, 100);
    for (const side of [net.a, net.b]) {
      assert.equal(side.rerollSockets.length, LINK_TIMING.rerolls, side.name);
      assert.deepEqual(ofType(side, "reroll").map((e) => e.round), [1, 2, 3]);
      assert.deepEqual(ofType(side, "punch_failed").map((e) => e.round), [0, 1, 2, 3]);
      const closed = new Set(side.closed);
      assert.ok(side.rerollSockets.every((via) => closed.has(via)), "every fresh socket closed");
      assert.equal(side.link.path, "relay");
    }
    assert.deepEqual(net.b.received, ["over the relay"]);
    // Rerolled rounds take turns to open first: the initiator (a) in round
    // 1, the responder in round 2, the initiator in round 3.
    const first = [0, 1, 2].map((i) =>
      net.openings.find((o) =>
        o.via === net.a.rerollSockets[i] && o.side === "a" ||
        o.via === net.b.rerollSockets[i] && o.side === "b"
      )?.side
    );
    assert.deepEqual(first, ["a", "b", "a"]);
    const connects = net.a.connects;
    await net.tick(LINK_TIMING.upgradeRetryMs, 500);
    assert.equal(net.a.connects, connects + 1, "then a new introduction, as before rerolls");
  } finally {
    net.close();
  }
});

Deno.test("a peer that never rerolls (an older version): the reroll is abandoned after the wait and its socket closed", async () => {
  const net = new NatNet({ rerolls: { b: false } });
  try {
    await net.punch("a");
    await net.tick(LINK_TIMING.rerollIceMs + LINK_TIMING.rerollWaitMs + 500, 100);
    assert.deepEqual(ofType(net.a, "reroll").map((e) => e.round), [1]);
    assert.deepEqual(ofType(net.a, "reroll_unanswered").map((e) => e.round), [1]);
    assert.deepEqual(net.a.closed, net.a.rerollSockets, "the fresh socket closed");
    assert.equal(net.a.link.path, "relay");
    // b, unable to reroll, runs its round to the end as before.
    assert.equal(ofType(net.b, "punch_failed").length, 0);
  } finally {
    net.close();
  }
});

Deno.test("a reroll socket still being bound when the link closes is closed once bound", async () => {
  const net = new NatNet();
  net.rerollSocketMs = 1000;
  try {
    net.udpUp = false; // nothing gets through: the first round fails and rerolls
    await net.punch("a");
    await net.tick(LINK_TIMING.rerollIceMs + 200, 100);
    assert.equal(net.a.rerollSockets.length, 1, "a reroll socket is being bound");
    net.a.link.close();
    await net.tick(1500, 100);
    for (const via of net.a.rerollSockets) {
      assert.ok(net.a.closed.includes(via), `socket ${via} left open`);
    }
  } finally {
    net.close();
  }
});

Deno.test("reroll frames that are forged, replayed, out of bounds or sent over UDP start nothing", async () => {
  const net = new NatNet();
  try {
    net.udpUp = false;
    await net.punch("none");
    await net.tick(200);
    const keyOf = await importSessionKey(KEY);
    const forger = await importSessionKey(toBase64(new Uint8Array(32).fill(1)));
    const reroll = (round: number, candidates: Candidate[] = []) => ({
      type: "reroll" as const,
      sessionId: SESSION,
      round,
      candidates,
    });
    const evil: Candidate[] = [{ ip: "203.0.113.66", port: 6666, kind: "public" }];
    // Forged (another key), beyond the bound, and over UDP instead of the relay.
    await net.b.link.receive(await sealFrame(reroll(1, evil), forger), undefined);
    await net.b.link.receive(
      await sealFrame(reroll(LINK_TIMING.rerolls + 1, evil), keyOf),
      undefined,
    );
    await net.b.link.receive(await sealFrame(reroll(1, evil), keyOf), {
      ip: "203.0.113.66",
      port: 6666,
    }, 0);
    await net.settle();
    assert.equal(net.b.rerollSockets.length, 0, "none of them started a reroll");
    // The real first reroll, then its replay once round 2 is under way.
    await net.tick(LINK_TIMING.rerollIceMs + 500);
    assert.deepEqual(ofType(net.b, "reroll").map((e) => e.round), [1]);
    await net.tick(LINK_TIMING.rerollIceMs + 500);
    assert.deepEqual(ofType(net.b, "reroll").map((e) => e.round), [1, 2]);
    const firstReroll = net.a.relayed.find((bytes) => bytes[3] === 7)!;
    await net.b.link.receive(firstReroll, undefined);
    await net.settle();
    assert.deepEqual(
      ofType(net.b, "reroll").map((e) => e.round),
      [1, 2],
      "the replay changed nothing",
    );
    const probesTo = (side: Side) =>
      ofType(side, "punch").filter((e) => e.round > 0).map((e) => e.candidates);
    assert.deepEqual(probesTo(net.b), [1, 1]);
  } finally {
    net.close();
  }
});

Deno.test("suspectMapping() rerolls a first round still under way at once, and the peer follows; a direct link ignores it", async () => {
  const net = new NatNet();
  try {
    await net.punch("a");
    await net.tick(600);
    assert.equal(net.a.link.path, "relay", "the moved mapping keeps round 0 from working");
    net.a.link.suspectMapping();
    await net.tick(1000);
    const failed = (side: Side) => ofType(side, "punch_failed").map((e) => [e.round, e.cause]);
    assert.deepEqual(failed(net.a), [[0, "mapping_suspect"]]);
    assert.deepEqual(failed(net.b), [[0, "peer_rerolled"]]);
    // Neither round ran its course: no suspicion spreads from here (no cascade).
    assert.deepEqual([net.a, net.b].map((s) => ofType(s, "punch_failed")[0].suspect), [
      false,
      false,
    ]);
    for (const side of [net.a, net.b]) {
      assert.equal(side.link.path, "direct", side.name);
      assert.equal(ofType(side, "direct").at(-1)!.round, 1);
    }
    const before = net.a.events.length;
    net.a.link.suspectMapping();
    await net.tick(200);
    assert.deepEqual(
      net.a.events.slice(before).filter((e) => e.type !== "direct"),
      [],
      "nothing once direct",
    );
  } finally {
    net.close();
  }
});
