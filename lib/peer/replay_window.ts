/**
 * A sliding replay window over sequence numbers (the anti-replay window of
 * IPsec, RFC 4303 §3.4.3, and WireGuard): a number is taken once, newer
 * numbers move the window, and numbers older than the window are refused.
 * Pure: the link keeps one per introduction for its datagrams.
 *
 * @module
 */

/** Sequence numbers a window remembers behind the newest. */
export const REPLAY_WINDOW = 64;

/** One sender's sequence numbers, as seen by the receiver. */
export class ReplayWindow {
  #newest = -1;
  /** Slot `seq % REPLAY_WINDOW` holds the last number taken there. */
  #slots = new Float64Array(REPLAY_WINDOW).fill(-1);

  /** The newest number taken (-1: none yet). */
  get newest(): number {
    return this.#newest;
  }

  /**
   * Takes `seq` if it was not taken before and is not older than the window;
   * false for a duplicate (a replay) or a number too old to tell.
   */
  accept(seq: number): boolean {
    if (!Number.isSafeInteger(seq) || seq < 0) return false;
    if (seq <= this.#newest - REPLAY_WINDOW) return false;
    const slot = seq % REPLAY_WINDOW;
    // Within the window a slot holds `seq` itself or a number a window older.
    if (this.#slots[slot] === seq) return false;
    this.#slots[slot] = seq;
    if (seq > this.#newest) this.#newest = seq;
    return true;
  }
}
