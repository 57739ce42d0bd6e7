/**
 * How much a worker sends to an address that has not answered: the punching
 * checks of every link go through one budget per destination IP, so no
 * introduction, however often repeated and whatever its candidates say, makes
 * the worker send more than a small, paced amount to a host that never
 * answers (RFC 8445's pacing, RFC 7675's consent: stop without an answer).
 * An IP that answered (an authenticated frame came from it) or that the
 * rendezvous vouches for (it sees the peer's session come from it) is not
 * limited here; the strategies bound those themselves. Pure, on an injected
 * clock.
 *
 * @module
 */

import type { Clock } from "../core/clock.ts";
import { TokenBucket } from "../core/rate_limit.ts";

/** The budget's limits. */
export interface SendBudgetLimits {
  /** Packets to an unanswered, unvouched IP at once. */
  burst: number;
  /** Then this many a minute. */
  perMinute: number;
  /** How long an answer, or a vouch, lifts the limit. */
  trustMs: number;
  /** IPs remembered; past it the least recently used is forgotten. */
  maxAddresses: number;
}

/** The defaults: at most 100 packets at once and 100 a minute to a host that never answers. */
export const SEND_BUDGET: Readonly<SendBudgetLimits> = {
  burst: 100,
  perMinute: 100,
  trustMs: 120_000,
  maxAddresses: 4096,
};

interface Entry {
  /** Packets it may still get while not trusted. */
  bucket: TokenBucket;
  /** Until when the IP answered or was vouched for. */
  trustedUntil: number;
}

/** The worker's budget of packets to addresses that have not answered. */
export class SendBudget {
  /** Packets not sent because an address was out of budget. */
  dropped = 0;
  #clock: Clock;
  #limits: Readonly<SendBudgetLimits>;
  #entries = new Map<string, Entry>();

  /** A budget on `clock` within `limits`. */
  constructor(clock: Clock, limits: Readonly<SendBudgetLimits> = SEND_BUDGET) {
    this.#clock = clock;
    this.#limits = limits;
  }

  #entry(ip: string, now: number): Entry {
    let entry = this.#entries.get(ip);
    if (entry) {
      this.#entries.delete(ip); // moved to the end: least recently used first
    } else {
      const { burst, perMinute } = this.#limits;
      entry = { bucket: new TokenBucket(perMinute / 60, burst, now), trustedUntil: 0 };
    }
    this.#entries.set(ip, entry);
    if (this.#entries.size > this.#limits.maxAddresses) {
      this.#entries.delete(this.#entries.keys().next().value!);
    }
    return entry;
  }

  /** An authenticated frame came from `ip`. */
  heard(ip: string): void {
    const now = this.#clock.now();
    this.#entry(ip, now).trustedUntil = now + this.#limits.trustMs;
  }

  /** The rendezvous vouches for `ip` (a peer's session comes from it). */
  vouch(ip: string): void {
    this.heard(ip);
  }

  /** Whether one more packet may go to `ip` now (spent if so). */
  take(ip: string): boolean {
    const now = this.#clock.now();
    const entry = this.#entry(ip, now);
    if (now < entry.trustedUntil || entry.bucket.take(now)) return true;
    this.dropped++;
    return false;
  }
}
