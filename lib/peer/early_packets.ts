/**
 * Packets that overtake their introduction. A peer that dials the moment
 * it asks for an introduction sends its first QUIC packets through the
 * relay at once, and the rendezvous relays frames before it has finished
 * the introduction, so they can reach us before the `punch` that tells us
 * the peer may have a stand-in. Dropped, the dialer's QUIC waits out its
 * first probe timeout (1 s, RFC 9002's initial RTT of 333 ms × 3) before it
 * sends them again; held here a moment, they go to QUIC as soon as the
 * introduction arrives.
 *
 * Bounded: a few packets per peer, a few dozen peers (the oldest goes when
 * another comes), each kept one probe timeout at most — by then QUIC has
 * sent its own again.
 *
 * @module
 */

/** How many packets, for how many peers, for how long. */
export interface EarlyPacketLimits {
  perPeer: number;
  peers: number;
  ms: number;
}

/** The defaults: 4 packets (an Initial and its coalesced company), 64 peers, 1 s; 512 KiB at most. */
export const EARLY_PACKET_LIMITS: Readonly<EarlyPacketLimits> = { perPeer: 4, peers: 64, ms: 1000 };

/** Packets from peers named but not yet introduced, held until they are. */
export class EarlyPackets {
  #limits: Readonly<EarlyPacketLimits>;
  #now: () => number;
  #held = new Map<string, { at: number; packets: Uint8Array[] }>();
  /** Packets held so far, and those that found no room (counted, then dropped). */
  readonly counts = { held: 0, dropped: 0 };

  /** Packets held within `limits`, timed by `now`. */
  constructor(
    limits: Partial<EarlyPacketLimits> = {},
    now: () => number = () => performance.now(),
  ) {
    this.#limits = { ...EARLY_PACKET_LIMITS, ...limits };
    this.#now = now;
  }

  /** Peers with packets held. */
  get size(): number {
    return this.#held.size;
  }

  /** Keeps a copy of `packet` from `peerId`; false when there is no room for it. */
  hold(peerId: string, packet: Uint8Array): boolean {
    const now = this.#now();
    let entry = this.#held.get(peerId);
    if (entry && now - entry.at > this.#limits.ms) {
      this.#held.delete(peerId);
      entry = undefined;
    }
    if (!entry) {
      if (this.#held.size >= this.#limits.peers) {
        const oldest = this.#held.keys().next().value!;
        this.counts.dropped += this.#held.get(oldest)!.packets.length;
        this.#held.delete(oldest);
      }
      entry = { at: now, packets: [] };
      this.#held.set(peerId, entry);
    }
    if (entry.packets.length >= this.#limits.perPeer) {
      this.counts.dropped++;
      return false;
    }
    entry.packets.push(packet.slice());
    this.counts.held++;
    return true;
  }

  /** The packets held for `peerId` (none once they are a probe timeout old), forgotten here. */
  take(peerId: string): Uint8Array[] {
    const entry = this.#held.get(peerId);
    this.#held.delete(peerId);
    if (!entry || this.#now() - entry.at > this.#limits.ms) return [];
    return entry.packets;
  }
}
