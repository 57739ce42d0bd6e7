/**
 * Asking the rendezvous again to introduce a pair when a candidate came
 * that may open what the last introduction could not (a port mapping, the
 * peer's or ours): now, and — since the rendezvous merges requests for a
 * pair within 3 s of its last introduction (`INTRODUCTION_DEDUP_MS`) — once
 * more after that window, if the pair is still not direct.
 *
 * @module
 */

import type { Clock, TimerId } from "../core/clock.ts";

/** After the rendezvous's 3 s window for a pair, with a margin. */
export const REINTRODUCE_AFTER_MS = 3500;

/** One timer per peer at most; `close()` clears them all. */
export class Reintroductions {
  readonly #timers = new Map<string, TimerId>();

  /**
   * `ask` requests an introduction; `stillWanted` says whether, after the
   * window, the pair still needs one (known, and not direct).
   */
  constructor(
    private readonly clock: Clock,
    private readonly ask: (peerId: string) => void,
    private readonly stillWanted: (peerId: string) => boolean,
  ) {}

  /** Asks now, and once more after the window unless the pair got direct. */
  request(peerId: string): void {
    this.ask(peerId);
    this.clock.clearTimeout(this.#timers.get(peerId));
    this.#timers.set(
      peerId,
      this.clock.setTimeout(() => {
        this.#timers.delete(peerId);
        if (this.stillWanted(peerId)) this.ask(peerId);
      }, REINTRODUCE_AFTER_MS),
    );
  }

  /** The peer left: no second request. */
  forget(peerId: string): void {
    this.clock.clearTimeout(this.#timers.get(peerId));
    this.#timers.delete(peerId);
  }

  /** Clears every timer. */
  close(): void {
    for (const timer of this.#timers.values()) this.clock.clearTimeout(timer);
    this.#timers.clear();
  }
}
