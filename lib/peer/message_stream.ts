/**
 * The link's small ordered message stream (the hellos and `PeerManager.send`):
 * sequence numbers, cumulative acks, retransmission after a timeout or on
 * every path change, and a bounded reorder buffer, so a message is delivered
 * once and in order whichever path carries it. Applications use connections
 * (QUIC) instead; this carries only diagnostics.
 *
 * @module
 */

import type { Clock, TimerId } from "../core/clock.ts";
import type { PathKind } from "../protocol/messages.ts";

/** Messages in flight, and out of order, one stream holds at most. */
export const STREAM_LIMITS = {
  /** Messages in flight before `send` refuses more. */
  window: 4096,
  /** Out-of-order messages held. */
  reorderBuffer: 4096,
} as const;

/** What the stream needs of its link. */
export interface StreamHost {
  clock: Clock;
  /** Sends message `seq` over the link's path now. */
  transmit(seq: number, payload: Uint8Array): void;
  /** The retransmission timeout for the path in use. */
  rto(): number;
  /** A message arrived in order, by `path`. */
  deliver(payload: Uint8Array, path: PathKind): void;
  /** Counts retransmissions (the link's stats). */
  stats: { retransmits: number };
}

/** One link's message stream. */
export class MessageStream {
  #h: StreamHost;
  #nextSeq = 0;
  #unacked = new Map<number, { payload: Uint8Array; sentAt: number }>();
  #expected = 0;
  #reorder = new Map<number, Uint8Array>();
  #rtoTimer?: TimerId;
  #closed = false;

  /** A stream over `host`. */
  constructor(host: StreamHost) {
    this.#h = host;
  }

  /** Messages sent and not acknowledged yet. */
  get inFlight(): number {
    return this.#unacked.size;
  }

  /** The next sequence number expected: what an ack says. */
  get expected(): number {
    return this.#expected;
  }

  /**
   * Sends `payload` and keeps it until acknowledged.
   *
   * @throws {RangeError} when the window is full.
   */
  send(payload: Uint8Array): void {
    if (this.#unacked.size >= STREAM_LIMITS.window) {
      throw new RangeError("Cannot send: window is full");
    }
    const seq = this.#nextSeq++;
    this.#unacked.set(seq, { payload, sentAt: this.#h.clock.now() });
    this.#h.transmit(seq, payload);
    this.#armRto();
  }

  /** Sends everything unacknowledged again now (the path changed). */
  retransmitAll(): void {
    const now = this.#h.clock.now();
    for (const [seq, entry] of this.#unacked) {
      entry.sentAt = now;
      this.#h.stats.retransmits++;
      this.#h.transmit(seq, entry.payload);
    }
    if (this.#unacked.size) this.#armRto();
  }

  /** The peer acknowledged everything before `seq`. */
  acked(seq: number): void {
    for (const sent of this.#unacked.keys()) if (sent < seq) this.#unacked.delete(sent);
  }

  /** Message `seq` arrived by `path`: delivered in order, held, or dropped as a duplicate. */
  accept(seq: number, payload: Uint8Array, path: PathKind): void {
    if (seq < this.#expected) return; // a duplicate (its ack was lost)
    if (seq > this.#expected) {
      if (this.#reorder.size < STREAM_LIMITS.reorderBuffer) this.#reorder.set(seq, payload);
      return;
    }
    this.#h.deliver(payload, path);
    this.#expected++;
    let next;
    while ((next = this.#reorder.get(this.#expected)) !== undefined) {
      this.#reorder.delete(this.#expected);
      this.#h.deliver(next, path);
      this.#expected++;
    }
  }

  #armRto(): void {
    if (this.#rtoTimer !== undefined || this.#closed) return;
    this.#rtoTimer = this.#h.clock.setTimeout(() => {
      this.#rtoTimer = undefined;
      if (this.#closed) return;
      const now = this.#h.clock.now();
      const rto = this.#h.rto();
      for (const [seq, entry] of this.#unacked) {
        if (now - entry.sentAt >= rto) {
          entry.sentAt = now;
          this.#h.stats.retransmits++;
          this.#h.transmit(seq, entry.payload);
        }
      }
      if (this.#unacked.size) this.#armRto();
    }, this.#h.rto());
  }

  /** Stops retransmitting. */
  close(): void {
    this.#closed = true;
    if (this.#rtoTimer !== undefined) this.#h.clock.clearTimeout(this.#rtoTimer);
    this.#rtoTimer = undefined;
  }
}
