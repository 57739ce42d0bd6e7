/**
 * Exponential backoff with full jitter (AWS Architecture Blog, "Exponential
 * Backoff and Jitter"): each delay is uniform in [0, min(max, base · 2^n)].
 * Full jitter spreads a fleet that lost its rendezvous at the same instant
 * over the whole window, instead of bringing it back in synchronized waves.
 *
 * @module
 */

/** Options for {@linkcode Backoff}. */
export interface BackoffOptions {
  /** First window, in milliseconds. @default {500} */
  baseMs?: number;
  /** Largest window, in milliseconds. @default {30000} */
  maxMs?: number;
  /** Source of randomness in [0, 1). @default {Math.random} */
  random?: () => number;
}

/**
 * Successive reconnect delays.
 *
 * @example
 * ```ts
 * const backoff = new Backoff({ baseMs: 500, maxMs: 30_000 });
 * backoff.next(); // somewhere in [0, 500)
 * backoff.next(); // somewhere in [0, 1000)
 * backoff.reset(); // after a stable session
 * ```
 */
export class Backoff {
  readonly baseMs: number;
  readonly maxMs: number;
  #random: () => number;
  #attempt = 0;

  constructor(options: BackoffOptions = {}) {
    const { baseMs = 500, maxMs = 30_000, random = Math.random } = options;
    if (!(baseMs > 0) || !(maxMs >= baseMs)) {
      throw new RangeError(
        `Cannot create backoff: need 0 < baseMs <= maxMs: current values are ${baseMs} and ${maxMs}`,
      );
    }
    this.baseMs = baseMs;
    this.maxMs = maxMs;
    this.#random = random;
  }

  /** How many delays were handed out since the last reset. */
  get attempt(): number {
    return this.#attempt;
  }

  /** The current window's upper bound, in milliseconds. */
  get windowMs(): number {
    // Capping the exponent keeps 2^n finite however long the outage lasts.
    return Math.min(this.maxMs, this.baseMs * 2 ** Math.min(this.#attempt, 30));
  }

  /** The next delay, in milliseconds; widens the window for the one after. */
  next(): number {
    const delay = Math.floor(this.#random() * this.windowMs);
    this.#attempt++;
    return delay;
  }

  /** Starts again from the first window. */
  reset(): void {
    this.#attempt = 0;
  }
}
