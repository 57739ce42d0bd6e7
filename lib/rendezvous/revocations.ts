/**
 * Revoked workers. A ban names a key (and the worker id it was used with),
 * or, for a keyless worker, only its id; a session whose key or id matches
 * one is refused with close code 4009, and a live one is closed the moment
 * the ban is made — on this instance, or in a fleet on every instance (the
 * bans live in Redis, and each instance keeps a copy in memory so a
 * registration never waits on Redis to be checked).
 *
 * This module is the bans themselves: their shape, the admin request that
 * makes one, and the in-memory index with its expiry. Where they persist is
 * a {@linkcode BanStore} (`fleet_bans.ts` for Redis); without one they live
 * as long as the process.
 *
 * @module
 */

import type { Clock } from "../core/clock.ts";
import { fingerprint, parsePublicKey } from "../protocol/identity.ts";
import { isValidWorkerId } from "../protocol/messages.ts";

/** One ban. Times are milliseconds since the epoch. */
export interface Ban {
  /**
   * What the ban is known by: the key's fingerprint, or `id:` and the
   * worker id when no key is known.
   */
  readonly id: string;
  /** The worker id it was made for (refused with any key), or null. */
  readonly worker_id: string | null;
  /** The Ed25519 key it refuses (base64url, under any id), or null. */
  readonly key: string | null;
  /** The key's fingerprint, or null. */
  readonly key_fingerprint: string | null;
  /** Why, as the admin said (sent to the worker in the close reason). */
  readonly reason: string;
  /** When it was made. */
  readonly revoked_at: number;
  /** When it lapses, or null: until lifted. */
  readonly expires_at: number | null;
}

/** What `POST /admin/revoke` asks for. */
export interface RevokeRequest {
  workerId: string | null;
  key: string | null;
  reason: string;
  durationSec: number | null;
}

/** Longest reason kept (the close reason carries at most 123 bytes of it). */
export const MAX_REASON_CHARS = 200;
/** Longest ban: ten years. */
export const MAX_BAN_SEC = 10 * 365 * 86_400;
/** Most bans held; past it a new one is refused (409) until some are lifted or lapse. */
export const MAX_BANS = 100_000;
/** The reason given when the admin gives none. */
export const DEFAULT_REASON = "revoked by an administrator";

/** A revocation request that cannot be carried out; `status` is the HTTP answer. */
export class RevokeError extends Error {
  override name = "RevokeError";
  /** HTTP status to answer with. */
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

/**
 * Reads the JSON body of `POST /admin/revoke`:
 * `{"worker_id"?, "key"?, "reason"?, "duration_sec"?}`, at least one of the
 * first two.
 *
 * @throws {RevokeError} (400) naming the field that is wrong
 */
export function parseRevokeRequest(body: unknown): RevokeRequest {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new RevokeError(400, 'Cannot revoke: send a JSON object {"worker_id"} or {"key"}');
  }
  const b = body as Record<string, unknown>;
  const workerId = b.worker_id ?? null;
  if (workerId !== null && (typeof workerId !== "string" || !isValidWorkerId(workerId))) {
    throw new RevokeError(
      400,
      "Cannot revoke: worker_id must be 1-128 characters of [A-Za-z0-9._-]",
    );
  }
  let key: string | null = null;
  if (b.key !== undefined && b.key !== null) {
    try {
      if (typeof b.key !== "string") throw new Error("key must be a string");
      key = parsePublicKey(b.key);
    } catch (error) {
      throw new RevokeError(400, `Cannot revoke: ${(error as Error).message}`);
    }
  }
  if (workerId === null && key === null) {
    throw new RevokeError(400, 'Cannot revoke: name the worker ("worker_id") or its key ("key")');
  }
  const reason = b.reason ?? DEFAULT_REASON;
  if (
    typeof reason !== "string" || reason.trim() === "" || reason.length > MAX_REASON_CHARS ||
    // deno-lint-ignore no-control-regex
    /[\u0000-\u001f\u007f]/.test(reason)
  ) {
    throw new RevokeError(
      400,
      `Cannot revoke: reason must be 1-${MAX_REASON_CHARS} printable characters`,
    );
  }
  const duration = b.duration_sec ?? null;
  if (
    duration !== null &&
    (typeof duration !== "number" || !Number.isInteger(duration) || duration < 1 ||
      duration > MAX_BAN_SEC)
  ) {
    throw new RevokeError(
      400,
      `Cannot revoke: duration_sec must be a whole number of seconds from 1 to ${MAX_BAN_SEC} (omit it: until lifted)`,
    );
  }
  return { workerId, key, reason: reason.trim(), durationSec: duration as number | null };
}

/** The ban `request` makes at `now`; `key` is the one the worker id is using, if the request named none. */
export async function makeBan(
  request: RevokeRequest,
  key: string | null,
  now: number,
): Promise<Ban> {
  const k = request.key ?? key;
  const keyFingerprint = k === null ? null : await fingerprint(k);
  return {
    id: keyFingerprint ?? `id:${request.workerId}`,
    worker_id: request.workerId,
    key: k,
    key_fingerprint: keyFingerprint,
    reason: request.reason,
    revoked_at: now,
    expires_at: request.durationSec === null ? null : now + request.durationSec * 1000,
  };
}

/**
 * Reads a stored ban (from Redis, or another instance's event); undefined
 * for anything that is not one, so a stranger's write cannot crash us.
 */
export function parseBan(value: unknown): Ban | undefined {
  if (value === null || typeof value !== "object") return undefined;
  const b = value as Record<string, unknown>;
  const str = (v: unknown) => v === null || typeof v === "string";
  const time = (v: unknown) => typeof v === "number" && Number.isFinite(v);
  if (
    typeof b.id !== "string" || !str(b.worker_id) || !str(b.key) || !str(b.key_fingerprint) ||
    typeof b.reason !== "string" || !time(b.revoked_at) ||
    !(b.expires_at === null || time(b.expires_at)) || (b.key === null && b.worker_id === null)
  ) {
    return undefined;
  }
  return {
    id: b.id,
    worker_id: b.worker_id as string | null,
    key: b.key as string | null,
    key_fingerprint: b.key_fingerprint as string | null,
    reason: b.reason.slice(0, MAX_REASON_CHARS),
    revoked_at: b.revoked_at as number,
    expires_at: b.expires_at as number | null,
  };
}

/** Whether `ban` refuses a session of `workerId` with `key` (null: keyless). */
export function banMatches(ban: Ban, workerId: string, key: string | null): boolean {
  return (ban.key !== null && ban.key === key) || ban.worker_id === workerId;
}

/**
 * The close reason for a session `ban` refuses: "revoked: " and the
 * admin's reason, cut to RFC 6455's 123 bytes.
 */
export function revokedCloseReason(ban: Ban): string {
  const text = `revoked: ${ban.reason}`;
  const bytes = new TextEncoder().encode(text);
  if (bytes.length <= 123) return text;
  // Cut on a character boundary.
  return new TextDecoder().decode(bytes.subarray(0, 120)).replace(/\uFFFD$/, "") + "…";
}

/** Where bans persist beyond this process, and how others' changes reach us. */
export interface BanStore {
  /**
   * Stores `ban` and tells the other instances.
   *
   * @throws when it cannot (the ban is then not made)
   */
  put(ban: Ban): Promise<void>;
  /** Removes the bans `ids` and tells the other instances. */
  remove(ids: readonly string[]): Promise<void>;
  /** Every stored ban (when this instance starts, and after Redis comes back). */
  all(): Promise<Ban[]>;
  /** Where the bans other instances make and lift are told. */
  listen?(listener: BanListener): void;
}

/** Who hears the bans other instances make and lift. */
export interface BanListener {
  /** A ban made elsewhere. */
  heard(ban: Ban): void;
  /** Bans lifted elsewhere. */
  liftedElsewhere(ids: readonly string[]): void;
  /** Read every ban from the store again. */
  reload(): Promise<void>;
}

/** The bans this instance knows, indexed for a registration's check. */
export class Revocations implements BanListener {
  #clock: Clock;
  #store?: BanStore;
  #onBan: (ban: Ban) => number;
  #byId = new Map<string, Ban>();
  #byKey = new Map<string, Ban>();
  #byWorker = new Map<string, Ban>();

  /**
   * Bans kept in `store` (none: this process only); `onBan` hears each ban
   * made here or heard from another instance, closes its sessions and says
   * how many.
   */
  constructor(options: { clock: Clock; store?: BanStore; onBan: (ban: Ban) => number }) {
    this.#clock = options.clock;
    this.#store = options.store;
    this.#onBan = options.onBan;
    options.store?.listen?.(this);
  }

  /** How many bans are held (lapsed ones included until next looked at). */
  get size(): number {
    return this.#byId.size;
  }

  #live(ban: Ban | undefined): Ban | undefined {
    if (ban === undefined) return undefined;
    if (ban.expires_at !== null && ban.expires_at <= this.#clock.now()) {
      this.#forget(ban.id);
      return undefined;
    }
    return ban;
  }

  /** The ban that refuses `workerId` with `key`, if any. O(1). */
  match(workerId: string, key: string | null): Ban | undefined {
    if (this.#byId.size === 0) return undefined;
    return (key === null ? undefined : this.#live(this.#byKey.get(key))) ??
      this.#live(this.#byWorker.get(workerId));
  }

  /** Every ban in force, oldest first. */
  list(): Ban[] {
    return [...this.#byId.values()].filter((ban) => this.#live(ban) !== undefined);
  }

  /**
   * Makes `ban`: stored (and announced) first, then applied here. Returns
   * how many of this instance's sessions it closed.
   *
   * @throws {RevokeError} 409 when {@linkcode MAX_BANS} are held; whatever the store throws
   */
  async add(ban: Ban): Promise<number> {
    if (!this.#byId.has(ban.id) && this.list().length >= MAX_BANS) {
      throw new RevokeError(409, `Cannot revoke: ${MAX_BANS} bans are held; lift some first`);
    }
    await this.#store?.put(ban);
    return this.heard(ban);
  }

  /**
   * Lifts every ban `subject` names: a ban id (key fingerprint or `id:…`),
   * a key, or a worker id. Returns the lifted bans.
   */
  async lift(subject: string): Promise<Ban[]> {
    const lifted = [...this.#byId.values()].filter((ban) =>
      ban.id === subject || ban.key === subject || ban.worker_id === subject ||
      ban.key_fingerprint === subject
    );
    if (lifted.length === 0) return [];
    await this.#store?.remove(lifted.map((ban) => ban.id));
    for (const ban of lifted) this.#forget(ban.id);
    return lifted;
  }

  /** A ban made here or on another instance: indexed, and its sessions closed (how many). */
  heard(ban: Ban): number {
    if (this.#byId.has(ban.id)) this.#forget(ban.id);
    if (ban.expires_at !== null && ban.expires_at <= this.#clock.now()) return 0;
    this.#byId.set(ban.id, ban);
    if (ban.key !== null) this.#byKey.set(ban.key, ban);
    if (ban.worker_id !== null) this.#byWorker.set(ban.worker_id, ban);
    return this.#onBan(ban);
  }

  /** Another instance lifted `ids`. */
  liftedElsewhere(ids: readonly string[]): void {
    for (const id of ids) this.#forget(id);
  }

  /** Replaces the bans with the store's (at start, and after Redis comes back). */
  async reload(): Promise<void> {
    if (!this.#store) return;
    const bans = await this.#store.all();
    const ids = new Set(bans.map((ban) => ban.id));
    for (const id of [...this.#byId.keys()]) if (!ids.has(id)) this.#forget(id);
    for (const ban of bans) {
      const known = this.#byId.get(ban.id);
      if (known?.revoked_at !== ban.revoked_at || known.expires_at !== ban.expires_at) {
        this.heard(ban);
      }
    }
  }

  #forget(id: string): void {
    const ban = this.#byId.get(id);
    if (!ban) return;
    this.#byId.delete(id);
    if (ban.key !== null && this.#byKey.get(ban.key) === ban) this.#byKey.delete(ban.key);
    if (ban.worker_id !== null && this.#byWorker.get(ban.worker_id) === ban) {
      this.#byWorker.delete(ban.worker_id);
      // Another ban may name the same id (one by key, one made while it was keyless).
      for (const other of this.#byId.values()) {
        if (other.worker_id === ban.worker_id) this.#byWorker.set(ban.worker_id, other);
      }
    }
  }
}
