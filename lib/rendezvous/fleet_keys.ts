/**
 * Key bindings across the fleet (`{prefix}:key:{worker id}`): a claim when
 * a keyed (or keyless) session registers, a release when it ends that starts
 * the `KEY_HOLD_SEC` countdown, and the repair after Redis was away —
 * releases it missed, and the connected sessions' bindings made again in
 * case it came back empty.
 *
 * @module
 */

import type { Clock } from "../core/clock.ts";
import { type RedisArg, type RespValue, text } from "../redis/client.ts";
import { CLAIM_KEY, RELEASE_KEY } from "./fleet_wire.ts";
import type { KeyClaim, WorkerRecord } from "./registry.ts";

/** What {@linkcode FleetKeys} needs of the fleet's Redis. */
export interface FleetStore {
  /** Runs a Lua script. */
  eval(script: string, keys: string[], args: RedisArg[]): Promise<RespValue>;
  /** A key under the fleet's prefix. */
  key(...parts: string[]): string;
  /** Whether Redis is reachable now. */
  redisUp(): boolean;
  /** Runs `work`, counting (not throwing) a failure: the repair after an outage covers it. */
  soft(work: () => Promise<unknown>): void;
  clock: Clock;
}

/** The fleet's key bindings. */
export class FleetKeys {
  #s: FleetStore;
  /** Releases Redis missed while it was away (the hold counts from the session's end). */
  #missed = new Map<string, { key: string; sessionId: string; at: number; holdMs: number }>();

  /** Bindings kept in `store`. */
  constructor(store: FleetStore) {
    this.#s = store;
  }

  /**
   * `Registry.claimKey` across the fleet.
   *
   * @throws {RedisUnavailableError} while Redis is away (the caller decides alone).
   */
  async claim(
    workerId: string,
    key: string | null,
    sessionId: string,
    now: number,
    holdMs: number,
  ): Promise<KeyClaim> {
    const bound = await this.#s.eval(CLAIM_KEY, [this.#s.key("key", workerId)], [
      key ?? "",
      now,
      holdMs,
      sessionId,
    ]);
    return bound === null ? { ok: true } : { ok: false, bound: text(bound)! };
  }

  /** `Registry.releaseKey` across the fleet (best effort). */
  release(workerId: string, key: string, sessionId: string, now: number, holdMs: number): void {
    // Missed while Redis is away, the binding would never expire: released again once it is back.
    if (!this.#s.redisUp()) this.#missed.set(workerId, { key, sessionId, at: now, holdMs });
    this.#s.soft(() => this.#release(workerId, key, sessionId, now, holdMs));
  }

  async #release(
    workerId: string,
    key: string,
    sessionId: string,
    at: number,
    holdMs: number,
  ): Promise<void> {
    const left = Math.max(1, holdMs - (this.#s.clock.now() - at));
    await this.#s.eval(RELEASE_KEY, [this.#s.key("key", workerId)], [key, at, left, sessionId]);
    if (this.#missed.get(workerId)?.at === at) this.#missed.delete(workerId);
  }

  /** A session of ours registered `workerId` again: its binding is in use, not to release. */
  bound(workerId: string): void {
    this.#missed.delete(workerId);
  }

  /**
   * Redis is back: the releases it missed are written (counted from each
   * session's end), and `local` sessions' bindings are made again (a no-op
   * where they are still there), so no other key can take a connected id.
   */
  async repair(local: readonly WorkerRecord[], holdMs: number): Promise<void> {
    for (const [workerId, { key, sessionId, at, holdMs }] of [...this.#missed]) {
      await this.#release(workerId, key, sessionId, at, holdMs);
    }
    const now = this.#s.clock.now();
    await Promise.all(
      local.filter((record) => record.key !== null).map((record) =>
        this.claim(record.worker_id, record.key, record.session_id, now, holdMs)
      ),
    );
  }
}
