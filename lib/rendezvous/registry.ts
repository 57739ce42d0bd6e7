/**
 * The registry of connected workers, behind a small async interface so a
 * shared backend (Redis, Firestore) can replace the in-memory one without
 * touching the server.
 *
 * Every write names the session it comes from. A session may only change or
 * remove the record it created, so a replaced session's late close can never
 * remove its successor's registration.
 *
 * @module
 */

import type {
  LeaveReason,
  PeerPathRecord,
  TransportCredentials,
  UdpEndpointRecord,
} from "../protocol/messages.ts";

/** Shared by every record that has no peer paths yet (most of a fleet). */
export const NO_PEER_PATHS: Readonly<Record<string, never>> = Object.freeze({});

/** What the registry holds for one worker. */
export interface WorkerRecord {
  /** The id the worker registered with. */
  readonly worker_id: string;
  /** Unique per WebSocket session; guards writes (see module docs). */
  readonly session_id: string;
  /** Client address seen by the rendezvous (or its trusted proxy). */
  readonly observed_ip: string | null;
  /** Client port; `null` when a proxy hides it. */
  readonly observed_port: number | null;
  /** What the worker's HTTP echo service said its public IP is. */
  readonly http_reported_public_ip: string | null;
  /** Milliseconds since the epoch. */
  readonly connected_at: number;
  /** The worker's UDP endpoint, once it reports one. */
  readonly udp_endpoint: UdpEndpointRecord | null;
  /** Peers see only workers of their own group. */
  readonly group: string;
  /** How the worker reaches each peer, as it last said. */
  readonly peer_paths: Readonly<Record<string, PeerPathRecord>>;
  /** The Ed25519 key the session proved (base64url); null for a keyless session. */
  readonly key: string | null;
  /** The key's fingerprint, or null. */
  readonly key_fingerprint: string | null;
  /** The worker's transport credentials, once it publishes them. */
  readonly transport: TransportCredentials | null;
}

/**
 * The answer to {@linkcode Registry.claimKey}: the session may register, or
 * the id is bound to another key (`bound`) that has held it recently.
 */
export type KeyClaim = { ok: true } | { ok: false; bound: string };

/** Fields a session may change on its own record. */
export type WorkerPatch = Partial<
  Pick<WorkerRecord, "http_reported_public_ip" | "udp_endpoint" | "peer_paths" | "transport">
>;

/** Storage for {@linkcode WorkerRecord}s. */
export interface Registry {
  /** Stores `record`, replacing any record with its worker id; returns the replaced one. */
  put(record: WorkerRecord): Promise<WorkerRecord | undefined>;
  /** Applies `patch` if the stored record belongs to `sessionId`; true when it did. */
  update(workerId: string, sessionId: string, patch: WorkerPatch): Promise<boolean>;
  /**
   * Removes the record if it belongs to `sessionId`; true when it did.
   * `why` travels with the removal to the fleet's other instances.
   */
  remove(workerId: string, sessionId: string, why?: LeaveReason): Promise<boolean>;
  /** The record of `workerId`, if registered. */
  get(workerId: string): Promise<WorkerRecord | undefined>;
  /** Every record, in registration order. */
  list(): Promise<WorkerRecord[]>;
  /** How many workers are registered. */
  size(): Promise<number>;
  /**
   * Decides, atomically for `workerId`, whether a session holding `key`
   * (null: keyless) may register it now, and records the binding:
   * - no binding, or one to the same key: yes (a key binds the id);
   * - bound to another key that has a session, or had one less than
   *   `holdMs` ago: no;
   * - bound to another key idle for `holdMs` or more: yes, and the binding
   *   moves to `key` (or is dropped for a keyless session).
   * A keyed claim makes `sessionId` the binding's holder.
   */
  claimKey(
    workerId: string,
    key: string | null,
    sessionId: string,
    now: number,
    holdMs: number,
  ): Promise<KeyClaim>;
  /**
   * Session `sessionId` with `key` for `workerId` ended at `now`: the hold
   * starts, if that session still holds the binding (a late cleanup of an
   * older session never starts the countdown under a newer one).
   */
  releaseKey(workerId: string, key: string, sessionId: string, now: number): Promise<void>;
}

/** One id's key binding: `idleSince` is null while its `holder` session is connected. */
interface KeyBinding {
  key: string;
  holder: string;
  idleSince: number | null;
}

/**
 * A registry in this process's memory: O(1) writes, for one rendezvous
 * instance (Cloud Run with `--max-instances=1`, or session affinity and one
 * instance per fleet).
 *
 * @example
 * ```ts
 * const registry = new MemoryRegistry();
 * await registry.put({ worker_id: "w1", session_id: "s1", observed_ip: "192.0.2.7",
 *   observed_port: 40000, http_reported_public_ip: null, connected_at: Date.now(),
 *   udp_endpoint: null, group: "default", peer_paths: {}, key: null, key_fingerprint: null,
 *   transport: null });
 * await registry.size(); // 1
 * ```
 */
export class MemoryRegistry implements Registry {
  #records = new Map<string, WorkerRecord>();
  #bindings = new Map<string, KeyBinding>();
  #prunedAt = 0;
  /** Hears every change of the key bindings (to keep them in a file). */
  onBindingsChanged?: () => void;

  /** The key bindings, for a file (`idle_since` null: held by a session). */
  bindings(): { id: string; key: string; idle_since: number | null }[] {
    return [...this.#bindings].map(([id, b]) => ({ id, key: b.key, idle_since: b.idleSince }));
  }

  /**
   * Takes back bindings kept across a restart; one a session held then is
   * idle from `now`, so its worker has the whole hold to come back.
   */
  restoreBindings(
    list: { id: string; key: string; idle_since: number | null }[],
    now: number,
  ): void {
    for (const { id, key, idle_since } of list) {
      this.#bindings.set(id, { key, holder: "", idleSince: idle_since ?? now });
    }
  }

  put(record: WorkerRecord): Promise<WorkerRecord | undefined> {
    const previous = this.#records.get(record.worker_id);
    // Delete first so a re-registered worker moves to the end of the order.
    this.#records.delete(record.worker_id);
    this.#records.set(record.worker_id, record);
    return Promise.resolve(previous);
  }

  update(workerId: string, sessionId: string, patch: WorkerPatch): Promise<boolean> {
    const current = this.#records.get(workerId);
    if (current === undefined || current.session_id !== sessionId) return Promise.resolve(false);
    this.#records.set(workerId, { ...current, ...patch });
    return Promise.resolve(true);
  }

  remove(workerId: string, sessionId: string): Promise<boolean> {
    const current = this.#records.get(workerId);
    if (current === undefined || current.session_id !== sessionId) return Promise.resolve(false);
    this.#records.delete(workerId);
    return Promise.resolve(true);
  }

  get(workerId: string): Promise<WorkerRecord | undefined> {
    return Promise.resolve(this.#records.get(workerId));
  }

  list(): Promise<WorkerRecord[]> {
    return Promise.resolve([...this.#records.values()]);
  }

  size(): Promise<number> {
    return Promise.resolve(this.#records.size);
  }

  claimKey(
    workerId: string,
    key: string | null,
    sessionId: string,
    now: number,
    holdMs: number,
  ): Promise<KeyClaim> {
    this.#prune(now, holdMs);
    const binding = this.#bindings.get(workerId);
    if (binding !== undefined && binding.key !== key) {
      const held = binding.idleSince === null || now - binding.idleSince < holdMs;
      if (held) return Promise.resolve({ ok: false, bound: binding.key });
      this.#bindings.delete(workerId);
    }
    if (key !== null) this.#bindings.set(workerId, { key, holder: sessionId, idleSince: null });
    if (key !== null || binding !== undefined) this.onBindingsChanged?.();
    return Promise.resolve({ ok: true });
  }

  releaseKey(workerId: string, key: string, sessionId: string, now: number): Promise<void> {
    const binding = this.#bindings.get(workerId);
    if (binding?.key === key && binding.holder === sessionId) {
      binding.idleSince = now;
      this.onBindingsChanged?.();
    }
    return Promise.resolve();
  }

  /** Drops bindings idle past their hold, at most once per half hold: memory stays bounded. */
  #prune(now: number, holdMs: number): void {
    if (now - this.#prunedAt < holdMs / 2) return;
    this.#prunedAt = now;
    for (const [id, binding] of this.#bindings) {
      if (binding.idleSince !== null && now - binding.idleSince >= holdMs) {
        this.#bindings.delete(id);
      }
    }
  }
}
