/**
 * Wrong credentials per client: the bearer token (`/metrics`, `/debug/*`,
 * the dashboard, a registration) and the dashboard's sign-in form. Each
 * client (an IPv4 address, or an IPv6 /64: one subscriber's whole prefix)
 * may be wrong a few times in a burst, then once every few seconds; past
 * that every attempt of its, right or wrong, is answered 429 with
 * `Retry-After` before the credential is even looked at, so a throttled
 * client learns nothing. Right credentials cost nothing.
 *
 * @module
 */

import type { Clock } from "../core/clock.ts";
import { TokenBucket } from "../core/rate_limit.ts";
import { parseIp } from "../protocol/ip.ts";
import { bearerAuthorized, problem, unauthorized } from "./http.ts";

/** How many wrong guesses a client gets. */
export interface GuessLimits {
  burst: number;
  refillMs: number;
  maxClients: number;
}

/** The defaults. */
export const GUESS_LIMITS: Readonly<GuessLimits> = {
  /** Wrong guesses a client may make at once. */
  burst: 10,
  /** Then one more every this many milliseconds (10 a minute). */
  refillMs: 6_000,
  /** Clients remembered; past it the least recently wrong is forgotten. */
  maxClients: 10_000,
};

/** What a client is known by: its IPv4 address, or its IPv6 /64. */
export function guessClient(ip: string | null): string {
  if (ip === null) return "unknown";
  const parsed = parseIp(ip);
  if (parsed?.family !== 6) return ip;
  const view = new DataView(parsed.bytes.buffer, parsed.bytes.byteOffset, 8);
  const hextets = [0, 2, 4, 6].map((i) => view.getUint16(i).toString(16));
  return `${hextets.join(":")}::/64`;
}

/** The wrong guesses of every client, bounded. */
export class Guesses {
  #clock: Clock;
  #limits: Readonly<GuessLimits>;
  #throttled: (client: string) => void;
  /** Each client's remaining guesses. */
  #clients = new Map<string, TokenBucket>();

  /**
   * Guesses on `clock`, within `limits`; `throttled` hears every attempt
   * answered 429 (to count and log it).
   */
  constructor(
    clock: Clock,
    throttled: (client: string) => void = () => {},
    limits: Readonly<GuessLimits> = GUESS_LIMITS,
  ) {
    this.#clock = clock;
    this.#throttled = throttled;
    this.#limits = limits;
  }

  /** `client`'s guesses left at `now`; undefined (forgotten) once it has all of them again. */
  #left(client: string, now: number): number | undefined {
    const tokens = this.#clients.get(client)?.tokens(now);
    if (tokens === undefined || tokens < this.#limits.burst) return tokens;
    this.#clients.delete(client); // full again: nothing to remember
    return undefined;
  }

  /**
   * The 429 for `client` while it has no guess left (counted), else
   * undefined: go on and check its credential.
   */
  refusal(client: string): Response | undefined {
    const left = this.#left(client, this.#clock.now());
    if (left === undefined || left >= 1) return undefined;
    this.#throttled(client);
    const retryAfter = Math.ceil(((1 - left) * this.#limits.refillMs) / 1000);
    return problem(429, "Too many wrong credentials from this client: try again later", {
      "retry-after": String(Math.max(1, retryAfter)),
    });
  }

  /**
   * The answer to a request that needs the bearer `token` (unset: none
   * needed): 429 while `client` is throttled, 401 when the token is missing
   * or wrong (a wrong one counts), undefined when it is right.
   */
  bearer(req: Request, token: string | undefined, client: string): Response | undefined {
    if (token === undefined) return undefined;
    const refusal = this.refusal(client);
    if (refusal) return refusal;
    if (bearerAuthorized(req, token)) return undefined;
    // No credential is not a guess (a scraper without its token, say).
    if (req.headers.has("authorization")) this.wrong(client);
    return unauthorized();
  }

  /** `client` was wrong once. */
  wrong(client: string): void {
    const now = this.#clock.now();
    const { burst, refillMs } = this.#limits;
    const bucket = this.#clients.get(client) ?? new TokenBucket(1000 / refillMs, burst, now);
    bucket.take(now); // none left: stays at none
    // Least recently wrong first: re-inserted at the end, the oldest go first.
    this.#clients.delete(client);
    this.#clients.set(client, bucket);
    if (this.#clients.size > this.#limits.maxClients) {
      this.#clients.delete(this.#clients.keys().next().value!);
    }
  }

  /** Clients remembered now. */
  get size(): number {
    return this.#clients.size;
  }
}
