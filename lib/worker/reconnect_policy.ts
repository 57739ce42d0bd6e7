/**
 * When a worker reconnects to the rendezvous: the one policy the worker and
 * the benchmark's load generator share, pure over an injected time.
 *
 * - A session that lasted `stableSessionMs` resets the backoff.
 * - After a close with 1001 (going away) or 1012 (restart) the server is
 *   being replaced: come back at once, and if that fails keep retrying within
 *   a short full-jitter window (`restartWindowMs`) for `restartGraceMs`, so
 *   a fleet returns as soon as the new server listens instead of drifting
 *   into long exponential waits during a restart of a few seconds.
 * - After an abnormal close (the connection dropped: 1006, 1005, 1011,
 *   1014, or Deno's 0) of a session that had been healthy (lasted
 *   `stableSessionMs`), the rendezvous most likely crashed: retry within the
 *   same short windows for `restartGraceMs`, but never at once (a fleet
 *   cut at the same instant would come back as one herd), then back off.
 * - After a revocation (4009), half to all of the longest wait: the ban
 *   stays until an admin lifts it, and a revoked fleet must not knock often.
 * - Otherwise exponential backoff with full jitter ({@linkcode Backoff}).
 *
 * @module
 */

import { Backoff } from "../core/backoff.ts";
import { CloseCode, reconnectsImmediately } from "../protocol/close_codes.ts";

/**
 * Close codes that say the connection dropped rather than that the server
 * closed it on purpose: 1005 (no status), 1006 (abnormal), 1011 (server
 * error), 1014 (bad gateway), and 0 (what Deno reports for an abnormal close).
 */
const ABNORMAL_CLOSES = new Set([0, 1005, 1006, 1011, 1014]);

/** How a connection attempt ended. */
export interface AttemptOutcome {
  /** The WebSocket opened (false: refused, failed handshake). */
  opened: boolean;
  /** Close code (1006 when it never opened). */
  code: number;
  /** How long the session lasted, when it opened. */
  durationMs: number;
}

/** Options for {@linkcode ReconnectPolicy}. */
export interface ReconnectPolicyOptions {
  /** @default {new Backoff()} */
  backoff?: Backoff;
  /** @default {10000} */
  stableSessionMs?: number;
  /** @default {10000} */
  restartGraceMs?: number;
  /** @default {1000} */
  restartWindowMs?: number;
  /** @default {Math.random} */
  random?: () => number;
}

/**
 * Reconnect delays.
 *
 * @example
 * ```ts
 * const policy = new ReconnectPolicy();
 * const wait = policy.next({ opened: true, code: 1001, durationMs: 60_000 }, Date.now()); // 0
 * ```
 */
export class ReconnectPolicy {
  readonly backoff: Backoff;
  #stableMs: number;
  #graceMs: number;
  #windowMs: number;
  #random: () => number;
  #restartUntil = -Infinity;
  #lastImmediate = false;

  constructor(options: ReconnectPolicyOptions = {}) {
    this.backoff = options.backoff ?? new Backoff();
    this.#stableMs = options.stableSessionMs ?? 10_000;
    this.#graceMs = options.restartGraceMs ?? 10_000;
    this.#windowMs = options.restartWindowMs ?? 1000;
    this.#random = options.random ?? Math.random;
  }

  /** Milliseconds to wait before the next attempt. */
  next(outcome: AttemptOutcome, now: number): number {
    if (outcome.opened && outcome.durationMs >= this.#stableMs) {
      this.backoff.reset();
      this.#lastImmediate = false;
      if (ABNORMAL_CLOSES.has(outcome.code)) this.#restartUntil = now + this.#graceMs;
    }
    if (outcome.opened && reconnectsImmediately(outcome.code)) {
      this.#restartUntil = now + this.#graceMs;
      // At once, but never twice in a row: a server that keeps saying
      // "going away" right after accepting gets the backoff.
      if (!this.#lastImmediate) {
        this.#lastImmediate = true;
        return 0;
      }
    }
    this.#lastImmediate = false;
    // Revoked: nothing changes until an admin lifts the ban; ask rarely (half to all of the longest wait).
    if (outcome.code === CloseCode.REVOKED) {
      this.backoff.next();
      return Math.floor(this.backoff.maxMs * (0.5 + this.#random() / 2));
    }
    if (now < this.#restartUntil) {
      return Math.floor(this.#random() * Math.min(this.#windowMs, this.backoff.maxMs));
    }
    return this.backoff.next();
  }
}
