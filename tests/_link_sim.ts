/**
 * The ground the PeerLink tests run two links on: a fake clock, a switch for
 * UDP, and the deliveries in flight (WebCrypto is real and asynchronous, so
 * after each clock step the pending work is let finish before judging).
 */

import { type Frame, importSessionKey, openFrame, sealFrame, toBase64 } from "../lib/peer/frame.ts";
import { type LinkEvent, PeerLink } from "../lib/peer/link.ts";
import type { NatMapping, UdpAddress } from "../lib/protocol/messages.ts";
import { FakeClock } from "./_fake_clock.ts";

/** The session key of the links these tests drive. */
export const KEY = toBase64(crypto.getRandomValues(new Uint8Array(32)));

export class LinkSim {
  clock = new FakeClock(0);
  /** False: every UDP packet is lost. */
  udpUp = true;
  /** Deliveries started and not finished. */
  pending: Promise<unknown>[] = [];

  /** Lets every pending delivery (and the sends it causes) finish. */
  async settle(): Promise<void> {
    for (let idle = 0; idle < 3;) {
      const batch = this.pending.splice(0);
      await Promise.all(batch);
      // WebCrypto resolves off the microtask queue: give it a turn.
      await new Promise((r) => setTimeout(r, 0));
      idle = batch.length === 0 && this.pending.length === 0 ? idle + 1 : 0;
    }
  }

  /** Moves the clock by `ms` in steps of `step`, settling after each. */
  async tick(ms: number, step = 10): Promise<void> {
    for (let t = 0; t < ms; t += step) {
      await this.clock.tick(Math.min(step, ms - t));
      await this.settle();
    }
  }
}

/** One link driven by hand: every frame it sends is opened and kept. */
export async function lone(
  own: NatMapping,
  peer: NatMapping,
  peerPublic: UdpAddress | UdpAddress[],
  onPaths?: () => void,
): Promise<{
  link: PeerLink;
  clock: FakeClock;
  sent: { frame: Frame; to: UdpAddress; via: number }[];
  closed: number[];
  events: LinkEvent[];
  seal: (frame: Frame) => Promise<Uint8Array>;
  settle: () => Promise<void>;
}> {
  const clock = new FakeClock(0);
  const key = await importSessionKey(KEY);
  const sent: { frame: Frame; to: UdpAddress; via: number }[] = [];
  const closed: number[] = [];
  const events: LinkEvent[] = [];
  const pending: Promise<unknown>[] = [];
  let nextVia = 1;
  const link = new PeerLink("peer", {
    clock,
    sendUdp: (bytes, to, via) =>
      pending.push(openFrame(bytes, key).then((frame) => sent.push({ frame, to, via }))),
    sendRelay: () => {},
    openSockets: (count) => Array.from({ length: Math.min(count, 4) }, () => nextVia++),
    closeSockets: (vias) => closed.push(...vias),
    requestConnect: () => {},
    onMessage: () => {},
    onPath: () => {},
    trace: (event) => events.push(event),
    onPaths,
    random: () => 0.5,
  });
  await link.punch({
    type: "punch",
    peer_id: "peer",
    session_id: "00000000000000a1",
    key: KEY,
    candidates: [peerPublic].flat().map((address) => ({ ...address, kind: "public" as const })),
    peer_nat: peer,
    own_nat: own,
    role: "initiator",
    delay_ms: 0,
  });
  const settle = async () => {
    for (let idle = 0; idle < 3;) {
      const batch = pending.splice(0);
      await Promise.all(batch);
      await new Promise((r) => setTimeout(r, 0));
      idle = batch.length === 0 && pending.length === 0 ? idle + 1 : 0;
    }
  };
  await clock.tick(0);
  await settle();
  // The peer is live (its first `opened`, relayed): a hard side takes its sockets.
  await link.receive(
    await sealFrame({
      type: "opened",
      sessionId: "00000000000000a1",
      ttl: 1,
      last: false,
      round: 0,
      time: 0,
    }, key),
    undefined,
  );
  await settle();
  return { link, clock, sent, closed, events, seal: (f) => sealFrame(f, key), settle };
}
