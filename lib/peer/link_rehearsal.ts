/**
 * The links' part of the warm-up: two links introduced to each other on a
 * clock of their own and a switch in memory punch through to a direct path
 * and exchange a message, at start. A fresh process compiles the punching
 * code here (a round's start alone took 1.5–2.4 ms cold), not in the middle
 * of its first real introduction — which comes while that connection's
 * handshake crosses the relay, and held its packets back 5–10 ms a side.
 * Nothing is sent: both links' sockets, relay and addresses are the switch's.
 *
 * @module
 */

import type { Clock, TimerId } from "../core/clock.ts";
import { toBase64 } from "../core/encoding.ts";
import type { NatMapping, PunchMessage, UdpAddress } from "../protocol/messages.ts";
import { PeerLink } from "./link.ts";

/** Addresses of the rehearsal's two sides (TEST-NET-1, never sent to). */
const SIDES: [UdpAddress, UdpAddress] = [
  { ip: "192.0.2.1", port: 1 },
  { ip: "192.0.2.2", port: 2 },
];
/** At most this many timer steps, this much virtual time. */
const MAX_STEPS = 400;
const MAX_VIRTUAL_MS = 5000;

/** A clock whose time moves only when the rehearsal moves it. */
class VirtualClock implements Clock {
  #now = 0;
  #next = 1;
  readonly #timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => void, ms: number): TimerId {
    const id = this.#next++;
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(id: TimerId): void {
    this.#timers.delete(id as number);
  }

  /** Fires the earliest timer; false when none is due before `limit`. */
  step(limit: number): boolean {
    let next: [number, { at: number; fn: () => void }] | undefined;
    for (const entry of this.#timers) {
      if (next === undefined || entry[1].at < next[1].at) next = entry;
    }
    if (next === undefined || next[1].at > limit) return false;
    this.#timers.delete(next[0]);
    this.#now = next[1].at;
    next[1].fn();
    return true;
  }
}

/**
 * Punches two links through to each other in memory. Resolves with whether
 * both reached a direct path; never throws.
 */
export async function rehearseLinks(): Promise<boolean> {
  const clock = new VirtualClock();
  const pending: Promise<unknown>[] = [];
  const links: PeerLink[] = [];
  const nat: NatMapping = "endpoint-independent";
  const make = (side: 0 | 1): PeerLink => {
    let via = 1;
    return new PeerLink(side === 0 ? "b" : "a", {
      clock,
      sendUdp: (bytes, to) => {
        const target = SIDES[1 - side];
        if (to.ip === target.ip && to.port === target.port) {
          pending.push(links[1 - side].receive(bytes, SIDES[side], 0));
        }
      },
      sendOpening: () => {},
      openingTtl: 2,
      sendRelay: (bytes) => void pending.push(links[1 - side].receive(bytes, undefined)),
      openSockets: (count) => Array.from({ length: count }, () => via++),
      closeSockets: () => {},
      requestConnect: () => {},
      onMessage: () => {},
      onPath: () => {},
    });
  };
  links.push(make(0), make(1));
  const settle = async () => {
    while (pending.length > 0) await Promise.allSettled(pending.splice(0));
    // WebCrypto resolves off the microtask queue: give it a turn.
    await new Promise((r) => setTimeout(r, 0));
  };
  try {
    const key = toBase64(crypto.getRandomValues(new Uint8Array(32)));
    const intro = (side: 0 | 1): PunchMessage => ({
      type: "punch",
      peer_id: side === 0 ? "b" : "a",
      session_id: "0000000000000001",
      key,
      candidates: [{ ...SIDES[1 - side], kind: "public" }],
      peer_nat: nat,
      own_nat: nat,
      role: side === 0 ? "initiator" : "responder",
      delay_ms: 0,
    });
    await Promise.all([links[0].punch(intro(0)), links[1].punch(intro(1))]);
    let sent = false;
    for (let steps = 0; steps < MAX_STEPS; steps++) {
      await settle();
      if (links.every((l) => l.path === "direct")) {
        if (sent) break;
        links[0].send(new Uint8Array(1));
        sent = true;
        continue;
      }
      if (!clock.step(MAX_VIRTUAL_MS)) break;
    }
    await settle();
    return links.every((l) => l.path === "direct");
  } catch {
    return false;
  } finally {
    for (const link of links) link.close();
  }
}
