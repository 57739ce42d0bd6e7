/**
 * What one fleet instance knows of every worker: its own sessions (by id,
 * to tell a stale event from a live one), and a copy of every other
 * instance's records, fed by the fleet's events and reloaded from Redis
 * after an outage. Events from different instances arrive in any order, so
 * one about an older session than the one held is dropped.
 *
 * @module
 */

import type { LeaveReason } from "../protocol/messages.ts";
import type { FleetHost, RemoteWorker } from "./fleet.ts";
import { newer, type Stored } from "./fleet_wire.ts";
import type { WorkerRecord } from "./registry.ts";

type SessionOrder = Pick<WorkerRecord, "connected_at" | "session_id">;

/** One instance's view of the fleet's workers. */
export class FleetView {
  #remote = new Map<string, RemoteWorker>();
  #ours = new Map<string, SessionOrder>();

  /** A worker registered on another instance, if any. */
  remote(workerId: string): RemoteWorker | undefined {
    return this.#remote.get(workerId);
  }

  /** Every worker registered on another instance. */
  remoteWorkers(): IterableIterator<RemoteWorker> {
    return this.#remote.values();
  }

  /** How many workers other instances hold. */
  get remoteCount(): number {
    return this.#remote.size;
  }

  /** One of our sessions registered `record`: a copy elsewhere is older now. */
  ours(record: WorkerRecord): void {
    this.#ours.set(record.worker_id, {
      connected_at: record.connected_at,
      session_id: record.session_id,
    });
    this.#remote.delete(record.worker_id);
  }

  /** Our session `sessionId` of `workerId` ended. */
  oursEnded(workerId: string, sessionId: string): void {
    if (this.#ours.get(workerId)?.session_id === sessionId) this.#ours.delete(workerId);
  }

  /** Instance `instance` put `record` (a new session, or a changed one). */
  put(instance: string, record: WorkerRecord, rttMs: number | null, host: FleetHost): void {
    // One about an older session than the one we hold (ours or another instance's) is stale.
    const mine = this.#ours.get(record.worker_id);
    if (mine && !newer(record, mine)) return;
    const before = this.#remote.get(record.worker_id);
    if (before && before.record.session_id !== record.session_id && newer(before.record, record)) {
      return;
    }
    this.#remote.set(record.worker_id, { instance, record, rttMs });
    if (before?.record.session_id === record.session_id) host.updated(record);
    else host.joined(record);
  }

  /** Session `sessionId` of `workerId` left the fleet (nothing, if we hold another). */
  del(
    workerId: string,
    sessionId: string,
    group: string,
    host: FleetHost,
    why?: LeaveReason,
  ): void {
    const before = this.#remote.get(workerId);
    if (!before || before.record.session_id !== sessionId) return;
    this.#remote.delete(workerId);
    host.left(workerId, group, why);
  }

  /** Instance `instance` wrote all its sessions again: these `ids` are all it has. */
  synced(instance: string, ids: ReadonlySet<string>, host: FleetHost): void {
    for (const [workerId, worker] of [...this.#remote]) {
      if (worker.instance === instance && !ids.has(workerId)) {
        this.del(workerId, worker.record.session_id, worker.record.group, host);
      }
    }
  }

  /**
   * Reloads the other instances' workers from Redis's `stored` records. One
   * held that Redis lacks goes if its instance is gone (not `alive`) or has
   * written its sessions since Redis's data began (`synced`); else that
   * instance has yet to, and says so when it does.
   */
  reload(
    stored: readonly Stored[],
    alive: ReadonlySet<string>,
    synced: ReadonlySet<string>,
    host: FleetHost,
  ): void {
    const seen = new Set<string>();
    for (const { i: instance, r: record, t: rttMs } of stored) {
      seen.add(record.worker_id);
      const before = this.#remote.get(record.worker_id);
      if (before?.record.session_id === record.session_id && before.instance === instance) continue;
      this.put(instance, record, rttMs, host);
    }
    for (const [workerId, worker] of [...this.#remote]) {
      if (seen.has(workerId)) continue;
      if (alive.has(worker.instance) && !synced.has(worker.instance)) continue;
      this.del(workerId, worker.record.session_id, worker.record.group, host);
    }
  }
}
