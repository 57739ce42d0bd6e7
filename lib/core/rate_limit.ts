/**
 * A token bucket, pure over an injected time, for per-session message limits.
 *
 * @module
 */

/**
 * Allows `ratePerSec` events per second on average and bursts of `burst`.
 *
 * @example
 * ```ts
 * const bucket = new TokenBucket(50, 100, Date.now());
 * bucket.take(Date.now()); // true until the burst is spent
 * ```
 */
export class TokenBucket {
  readonly ratePerSec: number;
  readonly burst: number;
  #tokens: number;
  #updatedAt: number;

  constructor(ratePerSec: number, burst: number, now: number) {
    if (!(ratePerSec > 0) || !(burst >= 1)) {
      throw new RangeError(
        `Cannot create token bucket: need rate > 0 and burst >= 1: current values are ${ratePerSec} and ${burst}`,
      );
    }
    this.ratePerSec = ratePerSec;
    this.burst = burst;
    this.#tokens = burst;
    this.#updatedAt = now;
  }

  /** The tokens there are at `now` (milliseconds), refilled up to the burst. */
  tokens(now: number): number {
    const elapsed = Math.max(0, now - this.#updatedAt);
    this.#updatedAt = now;
    this.#tokens = Math.min(this.burst, this.#tokens + (elapsed * this.ratePerSec) / 1000);
    return this.#tokens;
  }

  /** Spends `cost` tokens (default one) if there are that many; `now` is in milliseconds. */
  take(now: number, cost = 1): boolean {
    if (this.tokens(now) < cost) return false;
    this.#tokens -= cost;
    return true;
  }
}
