/**
 * The registry of a rendezvous instance in a fleet: its own sessions in
 * memory, mirrored to the fleet; reads see the whole fleet.
 *
 * @module
 */

import type { LeaveReason } from "../protocol/messages.ts";
import { RedisUnavailableError } from "../redis/client.ts";
import type { Fleet } from "./fleet.ts";
import type { KeyClaim, MemoryRegistry, Registry, WorkerPatch, WorkerRecord } from "./registry.ts";

/**
 * The registry of an instance in a fleet: its own sessions in memory (as
 * one instance keeps them), mirrored to the fleet; reads see the whole
 * fleet. Never waits on Redis but for key claims, and goes on alone while
 * Redis is away.
 */
export class FleetRegistry implements Registry {
  /** This instance's own sessions' records. */
  readonly local: MemoryRegistry;
  /** The rest of the fleet. */
  readonly fleet: Fleet;
  #holdMs: number;

  /** `keyHoldMs`: `KEY_HOLD_SEC`, how long an idle key binding lasts in Redis. */
  constructor(local: MemoryRegistry, fleet: Fleet, keyHoldMs: number) {
    this.local = local;
    this.fleet = fleet;
    this.#holdMs = keyHoldMs;
  }

  async put(record: WorkerRecord): Promise<WorkerRecord | undefined> {
    const previous = await this.local.put(record);
    this.fleet.put(record);
    return previous;
  }

  async update(workerId: string, sessionId: string, patch: WorkerPatch): Promise<boolean> {
    if (!(await this.local.update(workerId, sessionId, patch))) return false;
    const record = await this.local.get(workerId);
    if (record) this.fleet.update(record);
    return true;
  }

  /** True when the worker left the fleet (not when it moved to another instance). */
  async remove(workerId: string, sessionId: string, why?: LeaveReason): Promise<boolean> {
    const record = await this.local.get(workerId);
    if (!record || !(await this.local.remove(workerId, sessionId))) return false;
    return this.fleet.remove(workerId, sessionId, record.group, why);
  }

  async get(workerId: string): Promise<WorkerRecord | undefined> {
    return (await this.local.get(workerId)) ?? this.fleet.remote(workerId)?.record;
  }

  /** Every worker of the fleet, oldest registration first. */
  async list(): Promise<WorkerRecord[]> {
    const mine = await this.local.list();
    const ids = new Set(mine.map((r) => r.worker_id));
    const all = mine.slice();
    for (const worker of this.fleet.remoteWorkers()) {
      if (!ids.has(worker.record.worker_id)) all.push(worker.record);
    }
    return all.sort((a, b) => a.connected_at - b.connected_at);
  }

  /** Workers in the fleet (one that is moving between instances may count twice for a moment). */
  async size(): Promise<number> {
    return (await this.local.size()) + this.fleet.remoteCount;
  }

  /** Fleet-wide while Redis is up; this instance's own bindings while it is away. */
  async claimKey(
    workerId: string,
    key: string | null,
    sessionId: string,
    now: number,
    holdMs: number,
  ): Promise<KeyClaim> {
    if (this.fleet.up) {
      try {
        const claim = await this.fleet.keys.claim(workerId, key, sessionId, now, holdMs);
        if (claim.ok) await this.local.claimKey(workerId, key, sessionId, now, 0);
        return claim;
      } catch (error) {
        if (!(error instanceof RedisUnavailableError)) throw error;
      }
    }
    return await this.local.claimKey(workerId, key, sessionId, now, holdMs);
  }

  async releaseKey(workerId: string, key: string, sessionId: string, now: number): Promise<void> {
    await this.local.releaseKey(workerId, key, sessionId, now);
    this.fleet.keys.release(workerId, key, sessionId, now, this.#holdMs);
  }
}
