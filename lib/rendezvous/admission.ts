/**
 * Who may open a session: the instance-wide handshake rate, the session
 * cap, sessions per client IP and per proven key. Every refusal is counted
 * by kind and logged at most once a second per kind (with how many went
 * unlogged), and answered with `Retry-After`.
 *
 * @module
 */

import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import { TokenBucket } from "../core/rate_limit.ts";
import { problem } from "./http.ts";

/** Refusals by kind (`/debug/stats`, `/metrics`). */
export interface Refused {
  /** At `MAX_CONNECTIONS` (503). */
  at_capacity: number;
  /** Over `MAX_SESSIONS_PER_IP` (429). */
  per_ip: number;
  /** Over `MAX_SESSIONS_PER_KEY` (429). */
  per_key: number;
  /** Over `HANDSHAKE_RATE_PER_SEC` (503). */
  handshake_rate: number;
  /** A wrong token at the dashboard's sign-in (401). */
  sign_in: number;
  /** A client out of wrong-credential guesses (429; `guesses.ts`). */
  guesses: number;
  /** A revoked key or worker id (closed with 4009; `revocations.ts`). */
  revoked: number;
}

/** The limits {@linkcode Admission} applies. */
export interface AdmissionLimits {
  maxConnections: number;
  maxSessionsPerIp: number;
  maxSessionsPerKey: number;
  handshakeRatePerSec: number;
  handshakeBurst: number;
}

function decrement(counts: Map<string, number>, key: string): void {
  const n = (counts.get(key) ?? 0) - 1;
  if (n <= 0) counts.delete(key);
  else counts.set(key, n);
}

/** The rendezvous's admission control. */
export class Admission {
  /** Refused connection attempts, by why. */
  readonly refused: Refused = {
    at_capacity: 0,
    per_ip: 0,
    per_key: 0,
    handshake_rate: 0,
    sign_in: 0,
    guesses: 0,
    revoked: 0,
  };
  #limits: AdmissionLimits;
  #log: Logger;
  #clock: Clock;
  #perIp = new Map<string, number>();
  #perKey = new Map<string, number>();
  #handshakes?: TokenBucket;
  #loggedAt = new Map<string, { at: number; suppressed: number }>();

  /** Admission under `limits`, logging refusals to `log`. */
  constructor(limits: AdmissionLimits, log: Logger, clock: Clock) {
    this.#limits = limits;
    this.#log = log;
    this.#clock = clock;
  }

  /**
   * Whether a handshake may become a session now (`sessions` held already):
   * null when it may, else the refusal to answer with. Cheapest checks first.
   */
  check(
    sessions: number,
    observedIp: string | null,
    key: string | null,
    workerId: string,
  ): Response | null {
    const limits = this.#limits;
    const now = this.#clock.now();
    this.#handshakes ??= new TokenBucket(limits.handshakeRatePerSec, limits.handshakeBurst, now);
    if (!this.#handshakes.take(now)) {
      return this.refuse("handshake_rate", 503, "Too many handshakes at once; retry shortly", 1, {
        worker_id: workerId,
        handshake_rate_per_sec: limits.handshakeRatePerSec,
      });
    }
    if (sessions >= limits.maxConnections) {
      return this.refuse("at_capacity", 503, "Rendezvous is at capacity", 5, {
        worker_id: workerId,
        max_connections: limits.maxConnections,
      });
    }
    if (observedIp !== null && (this.#perIp.get(observedIp) ?? 0) >= limits.maxSessionsPerIp) {
      return this.refuse("per_ip", 429, "Too many sessions from this address", 10, {
        worker_id: workerId,
        observed_ip: observedIp,
        max_sessions_per_ip: limits.maxSessionsPerIp,
      });
    }
    if (key !== null && (this.#perKey.get(key) ?? 0) >= limits.maxSessionsPerKey) {
      return this.refuse("per_key", 429, "Too many sessions with this key", 10, {
        worker_id: workerId,
        max_sessions_per_key: limits.maxSessionsPerKey,
      });
    }
    return null;
  }

  /** A session from `observedIp` opened. */
  opened(observedIp: string | null): void {
    if (observedIp !== null) this.#perIp.set(observedIp, (this.#perIp.get(observedIp) ?? 0) + 1);
  }

  /** A session proved `key` and registered. */
  registered(key: string | null): void {
    if (key !== null) this.#perKey.set(key, (this.#perKey.get(key) ?? 0) + 1);
  }

  /** A session closed (`registered` with `key` or not). */
  closed(observedIp: string | null, key: string | null, registered: boolean): void {
    if (observedIp !== null) decrement(this.#perIp, observedIp);
    if (registered && key !== null) decrement(this.#perKey, key);
  }

  /** A refused attempt: noted (below), answered with `Retry-After`. */
  refuse(
    kind: keyof Refused,
    status: number,
    message: string,
    retryAfterSec: number,
    fields: Record<string, unknown>,
  ): Response {
    this.note(kind, status, fields);
    return problem(status, message, { "retry-after": String(retryAfterSec) });
  }

  /** Counts a refusal and logs it at most once a second per kind, with how many went unlogged. */
  note(kind: keyof Refused, status: number, fields: Record<string, unknown>): void {
    this.refused[kind]++;
    const now = this.#clock.now();
    const last = this.#loggedAt.get(kind);
    if (!last || now - last.at >= 1000) {
      this.#log.warn(`connection refused: ${kind.replaceAll("_", " ")}`, {
        ...fields,
        status,
        suppressed_since_last: last?.suppressed ?? 0,
      });
      this.#loggedAt.set(kind, { at: now, suppressed: 0 });
    } else {
      last.suppressed++;
    }
  }
}
