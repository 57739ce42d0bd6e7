/**
 * Many rendezvous instances, one fleet, over Redis (`REDIS_URL`).
 *
 * Each instance keeps its own sessions' records in memory, as a single
 * instance does, and mirrors them into Redis; it also keeps a copy of every
 * other instance's records, fed by a fleet-wide event channel, so listings,
 * peer lists and introductions read memory, never Redis, and go on (with the
 * last known fleet) while Redis is away.
 *
 * Redis holds:
 * - `{prefix}:workers`: hash, worker id → `{i: instance, r: record, t: rtt}`
 *   (JSON), written by Lua scripts that check the session (a replaced
 *   session can never overwrite or remove its successor);
 * - `{prefix}:inst:{instance}`: the worker ids each instance registered (to
 *   reap a dead instance's);
 * - `{prefix}:alive`: sorted set, instance → its last heartbeat (Redis's own
 *   clock, so instances' clocks never matter);
 * - `{prefix}:key:{worker id}`: the key an id is bound to (`KEY_HOLD_SEC`
 *   as the key's TTL once its session ends, or its instance is reaped).
 * Channels: `{prefix}:events` (records put and removed, JSON, published by
 * the scripts that write them, so every instance hears them in Redis's
 * order) and
 * `{prefix}:to:{instance}` (messages for a worker on that instance: server
 * messages, relayed transport packets, "your session was replaced").
 *
 * An instance that stops heartbeating for `ttlMs` is reaped by whichever
 * instance sees it first: its workers leave the fleet (`peer_left`), and
 * reconnect to the others. One that drains removes its workers as their
 * sessions close. When Redis comes back (or comes back empty), every
 * instance writes its sessions again and reloads the others'.
 *
 * @module
 */

import { randomHex } from "../core/encoding.ts";

import { type Clock, delay, systemClock } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import {
  Redis,
  type RedisArg,
  RedisReplyError,
  RedisUnavailableError,
  type RespValue,
  text,
} from "../redis/client.ts";
import type { LeaveReason, ServerMessage } from "../protocol/messages.ts";
import type { WorkerRecord } from "./registry.ts";
import { RENDEZVOUS_DEFAULTS } from "./options.ts";
import { FleetBans } from "./fleet_bans.ts";
import { FleetKeys } from "./fleet_keys.ts";
import { FleetView } from "./fleet_view.ts";
import {
  encodeEnvelope,
  type FleetEvent,
  HEARTBEAT,
  Kind,
  parseEnvelope,
  parseJson,
  PUT,
  REAP,
  REMOVE,
  type Stored,
  UPDATE,
} from "./fleet_wire.ts";

export { FleetRegistry } from "./fleet_registry.ts";

/** Options for {@linkcode Fleet}. */
export interface FleetOptions {
  /** `redis://` or `rediss://` URL, with AUTH credentials if needed. */
  url: string;
  /** PEM certificates to trust for `rediss://`. */
  caCerts?: string[];
  /** Prefix of every key and channel, so fleets can share a Redis. @default {"holepunch"} */
  prefix?: string;
  /** An instance silent this long is reaped. @default {5000} */
  ttlMs?: number;
  /** This instance's id. @default {random} */
  instance?: string;
  /** Where the fleet logs (Redis outages, reaped instances, syncs). */
  logger: Logger;
  /** Time source for timers. @default {systemClock} */
  clock?: Clock;
}

/** What the fleet needs of the rendezvous it serves. */
export interface FleetHost {
  /** A message for a worker of ours (`group` must match its session's). */
  deliver(workerId: string, group: string, message: ServerMessage): void;
  /** A relay frame for a worker of ours. */
  deliverBinary(workerId: string, group: string, bytes: Uint8Array): void;
  /** Another instance registered `workerId` after us: close our session `sessionId` (4000). */
  replaced(workerId: string, sessionId: string): void;
  /** A worker on another instance joined the fleet (or moved there). */
  joined(record: WorkerRecord): void;
  /** A worker on another instance changed its record (its UDP endpoint, say). */
  updated(record: WorkerRecord): void;
  /** A worker on another instance left the fleet (`why`: "revoked", or none). */
  left(workerId: string, group: string, why?: LeaveReason): void;
  /** Our sessions' records (written again when Redis comes back). */
  localRecords(): Promise<WorkerRecord[]>;
  /** The round trip a worker of ours reported, for introductions elsewhere. */
  rttOf(workerId: string): number | null;
  /** `KEY_HOLD_SEC` in ms: how long a key stays bound to an id after its session ends. */
  readonly keyHoldMs: number;
}

/** A worker registered on another instance. */
export interface RemoteWorker {
  /** The instance that holds its session. */
  instance: string;
  /** Its record, as that instance last wrote it. */
  record: WorkerRecord;
  /** The round trip it reported to its instance, for introductions. */
  rttMs: number | null;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
/**
 * Relayed packets Redis may owe replies for before more are dropped: about
 * 10 MB of 1,200-byte packets, a few hundred milliseconds at the rates
 * measured (bench:fleet), bounding what a flood can queue on the sender.
 */
const MAX_PUBLISHES_IN_FLIGHT = 8192;

/** The fleet as one instance sees it. */
export class Fleet {
  /** This instance's id in the fleet (random unless given). */
  readonly instance: string;
  readonly #o: Required<Omit<FleetOptions, "caCerts" | "instance">> & { caCerts?: string[] };
  readonly #redis: Redis;
  #host?: FleetHost;
  /** What this instance knows of every worker: its own sessions, and the others' records. */
  #view = new FleetView();
  /** Removals Redis missed while it was away: written once it is back. */
  #missedRemovals = new Map<string, { sessionId: string; group: string }>();
  /** @ignore Key bindings across the fleet; the fleet registry uses them. */
  readonly keys: FleetKeys;
  /** @ignore Revocations across the fleet; the rendezvous's `Revocations` use them. */
  readonly bans: FleetBans;
  #stop = new AbortController();
  #loops: Promise<void>[] = [];
  #synced = false;
  /** Counters for `/debug/stats`. */
  readonly stats = {
    redis_outages: 0,
    events_received: 0,
    messages_sent: 0,
    messages_received: 0,
    publish_failures: 0,
    instances_reaped: 0,
    workers_reaped: 0,
  };

  /** A fleet member; nothing connects until {@linkcode Fleet.start}. */
  constructor(options: FleetOptions) {
    this.instance = options.instance ?? randomHex(6);
    this.#o = {
      url: options.url,
      caCerts: options.caCerts,
      prefix: options.prefix ?? "holepunch",
      ttlMs: options.ttlMs ?? RENDEZVOUS_DEFAULTS.fleetTtlSec * 1000,
      logger: options.logger,
      clock: options.clock ?? systemClock,
    };
    this.#redis = new Redis({
      url: options.url,
      caCerts: options.caCerts,
      logger: options.logger,
      clock: this.#o.clock,
      pingMs: Math.max(250, Math.min(2000, this.#o.ttlMs / 4)),
      onUp: () => void this.#onUp(),
      onDown: () => {
        this.stats.redis_outages++;
        this.#synced = false;
      },
    });
    const store = {
      eval: (script: string, keys: string[], args: RedisArg[]) => this.#eval(script, keys, args),
      key: (...parts: string[]) => this.#key(...parts),
      redisUp: () => this.#redis.up,
      soft: (work: () => Promise<unknown>) => this.#soft(work),
      clock: this.#o.clock,
    };
    this.keys = new FleetKeys(store);
    this.bans = new FleetBans(store, this.instance);
  }

  #key(...parts: string[]): string {
    return [this.#o.prefix, ...parts].join(":");
  }

  /** Whether Redis is reachable and this instance's view is loaded. */
  get up(): boolean {
    return this.#redis.up && this.#synced;
  }

  /** Connects (and keeps reconnecting); events go to `host`. */
  start(host: FleetHost): void {
    this.#host = host;
    void this.#redis.subscribe(this.#key("events"), (payload) => this.#onEvent(payload));
    void this.#redis.subscribe(
      this.#key("to", this.instance),
      (payload) => this.#onMessage(payload),
    );
    this.#redis.start();
    this.#loops.push(this.#heartbeatLoop());
  }

  // ---- reads ---------------------------------------------------------------

  /** A worker registered on another instance, if any. */
  remote(workerId: string): RemoteWorker | undefined {
    return this.#view.remote(workerId);
  }

  /** Every worker registered on another instance. */
  remoteWorkers(): IterableIterator<RemoteWorker> {
    return this.#view.remoteWorkers();
  }

  /** How many workers other instances hold. */
  get remoteCount(): number {
    return this.#view.remoteCount;
  }

  // ---- writes of our own sessions ------------------------------------------

  #value(record: WorkerRecord): string {
    const stored: Stored = {
      i: this.instance,
      r: record,
      t: this.#host?.rttOf(record.worker_id) ?? null,
    };
    return JSON.stringify(stored);
  }

  #eval(script: string, keys: string[], args: RedisArg[]): Promise<RespValue> {
    return this.#redis.command("EVAL", script, keys.length, ...keys, ...args);
  }

  /** Commands that fail while Redis is away are repaired by the resync after it. */
  #soft(work: () => Promise<unknown>): void {
    try {
      work().catch((error) => this.#failed(error));
    } catch (error) {
      this.#failed(error);
    }
  }

  #failed(error: unknown): void {
    this.stats.publish_failures++;
    if (!(error instanceof RedisUnavailableError)) {
      this.#o.logger.warn("fleet write failed", { error: (error as Error).message });
    }
  }

  /** One of our sessions registered (or re-registered) `record`. */
  put(record: WorkerRecord): void {
    this.#view.ours(record);
    this.#missedRemovals.delete(record.worker_id);
    this.keys.bound(record.worker_id);
    this.#soft(() => this.#put(record));
  }

  #putEvent(record: WorkerRecord): string {
    const event: FleetEvent = {
      t: "put",
      i: this.instance,
      r: record,
      rtt: this.#host?.rttOf(record.worker_id) ?? null,
    };
    return JSON.stringify(event);
  }

  async #put(record: WorkerRecord): Promise<void> {
    const result = await this.#eval(
      PUT,
      [this.#key("workers"), this.#key("inst", ""), this.#key("events")],
      [
        record.worker_id,
        this.instance,
        this.#value(record),
        record.connected_at,
        record.session_id,
        this.#putEvent(record),
      ],
    ) as RespValue[];
    const outcome = text(result[0]);
    if (outcome === "newer") {
      // Another instance holds a newer session of this id (both registered
      // while Redis was away): ours goes, as the older one would on one instance.
      this.#host?.replaced(record.worker_id, record.session_id);
      return;
    }
    if (outcome === "replaced") {
      const [instance, sessionId] = [text(result[1])!, text(result[2])!];
      if (instance !== this.instance) {
        await this.#send(instance, Kind.Replaced, record.worker_id, "", encoder.encode(sessionId));
      }
    }
  }

  /** One of our sessions changed its record. */
  update(record: WorkerRecord): void {
    this.#soft(async () => {
      await this.#eval(UPDATE, [this.#key("workers"), this.#key("events")], [
        record.worker_id,
        record.session_id,
        this.#value(record),
        this.#putEvent(record),
      ]);
    });
  }

  /**
   * One of our sessions ended and its record went. Returns whether the
   * worker has left the fleet (false: it is registered on another instance
   * now, and no one should hear `peer_left`).
   */
  remove(workerId: string, sessionId: string, group: string, why?: LeaveReason): boolean {
    this.#view.oursEnded(workerId, sessionId);
    // Redis removes the record only if it is still this session's (the
    // script checks), so the removal goes there even when the worker has
    // moved: skipping it on a stale copy of an older session left the
    // record in Redis, and on every instance, for ever.
    if (!this.#redis.up) this.#missedRemovals.set(workerId, { sessionId, group });
    this.#soft(() => this.#remove(workerId, sessionId, group, false, why));
    return this.#view.remote(workerId) === undefined;
  }

  /** `missed`: the removal happened while Redis was away (which may have come back empty). */
  async #remove(
    workerId: string,
    sessionId: string,
    group: string,
    missed = false,
    why?: LeaveReason,
  ): Promise<void> {
    const event: FleetEvent = {
      t: "del",
      i: this.instance,
      id: workerId,
      sid: sessionId,
      g: group,
      ...(why ? { why } : {}),
    };
    const removed = await this.#eval(
      REMOVE,
      [this.#key("workers"), this.#key("inst", ""), this.#key("events")],
      [workerId, sessionId, this.instance, JSON.stringify(event)],
    );
    this.#missedRemovals.delete(workerId);
    // Others may still hold the record in memory (Redis may have come back
    // empty): they drop it only if the session matches.
    if (removed !== 1 && missed) await this.#publishEvent(event);
  }

  // ---- introductions -------------------------------------------------------

  /**
   * Claims the introduction of `pair` for `windowMs` across the fleet;
   * false when another instance has. While Redis is away, true (each
   * instance then deduplicates its own).
   */
  async claimIntroduction(pair: string, sessionId: string, windowMs: number): Promise<boolean> {
    if (!this.up) return true;
    try {
      const key = this.#key("intro", pair.replace("\n", "|"));
      return (await this.#redis.command("SET", key, sessionId, "NX", "PX", windowMs)) !== null;
    } catch (error) {
      this.#failed(error);
      return true;
    }
  }

  // ---- messages ------------------------------------------------------------

  /** Sends a server message to a worker on `instance`. */
  send(instance: string, workerId: string, group: string, message: ServerMessage): void {
    this.#soft(() =>
      this.#send(instance, Kind.Message, workerId, group, encoder.encode(JSON.stringify(message)))
    );
  }

  /** Sends a relay frame to a worker on `instance`; false when Redis is away (dropped). */
  sendBinary(instance: string, workerId: string, group: string, bytes: Uint8Array): boolean {
    // Redis that falls behind a flood sheds packets here, not memory.
    if (!this.#redis.up || this.#redis.inFlight >= MAX_PUBLISHES_IN_FLIGHT) return false;
    this.#soft(() => this.#send(instance, Kind.Binary, workerId, group, bytes));
    return true;
  }

  async #send(
    instance: string,
    kind: Kind,
    workerId: string,
    group: string,
    payload: Uint8Array,
  ): Promise<void> {
    this.stats.messages_sent++;
    await this.#redis.publish(
      this.#key("to", instance),
      encodeEnvelope({ kind, workerId, group, payload }),
    );
  }

  #onMessage(bytes: Uint8Array): void {
    const host = this.#host;
    const envelope = host ? parseEnvelope(bytes) : undefined;
    if (!host || !envelope) return;
    const { workerId, group, payload } = envelope;
    this.stats.messages_received++;
    switch (envelope.kind) {
      case Kind.Message: {
        const message = parseJson<ServerMessage>(payload);
        return message && host.deliver(workerId, group, message);
      }
      case Kind.Binary:
        return host.deliverBinary(workerId, group, payload);
      case Kind.Replaced:
        return host.replaced(workerId, decoder.decode(payload));
    }
  }

  // ---- events --------------------------------------------------------------

  async #publishEvent(event: FleetEvent): Promise<void> {
    await this.#redis.publish(this.#key("events"), JSON.stringify(event));
  }

  #onEvent(payload: Uint8Array): void {
    const event = parseJson<FleetEvent>(payload);
    if (!event || event.i === this.instance) return;
    this.stats.events_received++;
    const host = this.#host;
    if (!host) return;
    if (event.t === "put") this.#view.put(event.i, event.r, event.rtt, host);
    else if (event.t === "del") {
      this.#view.del(
        event.id,
        event.sid,
        event.g,
        host,
        event.why === "revoked" ? "revoked" : undefined,
      );
    } else if (event.t === "sync") this.#view.synced(event.i, new Set(event.ids), host);
    else this.bans.heard(event);
  }

  // ---- liveness and recovery -------------------------------------------------

  /** Redis is (back) up: write our sessions, then load everyone else's. */
  async #onUp(): Promise<void> {
    const host = this.#host;
    if (!host) return;
    try {
      await this.#heartbeat();
      for (const [workerId, { sessionId, group }] of [...this.#missedRemovals]) {
        await this.#remove(workerId, sessionId, group, true);
      }
      const local = await host.localRecords();
      await this.keys.repair(local, host.keyHoldMs);
      await Promise.all(local.map((record) => this.#put(record)));
      // Ours are all in Redis again: others may trust its snapshot of us,
      // and drop what they hold of ours that is not in this list.
      await this.#redis.command("HSET", this.#key("synced"), this.instance, Date.now());
      await this.#publishEvent({ t: "sync", i: this.instance, ids: local.map((r) => r.worker_id) });
      await this.#resync();
      await this.bans.reloaded();
      this.#synced = true;
      this.#o.logger.info("fleet synced", {
        instance: this.instance,
        local: local.length,
        remote: this.#view.remoteCount,
      });
    } catch (error) {
      this.#o.logger.warn("fleet sync failed", { error: (error as Error).message });
    }
  }

  /**
   * Reloads the other instances' workers. One we hold that Redis lacks goes
   * if its instance is gone or has written its sessions since Redis's data
   * began (`synced`); else that instance has yet to, and says so when it does.
   */
  async #resync(): Promise<void> {
    const [all, alive, synced] = await Promise.all([
      this.#redis.command("HGETALL", this.#key("workers")) as Promise<RespValue[]>,
      this.#redis.command("ZRANGE", this.#key("alive"), 0, -1) as Promise<RespValue[]>,
      this.#redis.command("HKEYS", this.#key("synced")) as Promise<RespValue[]>,
    ]);
    const host = this.#host;
    if (!host) return;
    const stored: Stored[] = [];
    for (let i = 0; i + 1 < all.length; i += 2) {
      try {
        stored.push(JSON.parse(text(all[i + 1])!));
      } catch {
        // Not ours to read: skipped.
      }
    }
    this.#view.reload(
      stored.filter((w) => w.i !== this.instance),
      new Set(alive.map((v) => text(v)!)),
      new Set(synced.map((v) => text(v)!)),
      host,
    );
  }

  async #heartbeat(): Promise<void> {
    const dead = await this.#eval(HEARTBEAT, [this.#key("alive")], [
      this.instance,
      this.#o.ttlMs,
    ]) as RespValue[];
    for (const value of dead) {
      const instance = text(value)!;
      if (instance === this.instance) continue;
      const workers = await this.#reap(instance, this.#o.ttlMs);
      if (workers === 0) continue;
      this.stats.instances_reaped++;
      this.stats.workers_reaped += workers;
      this.#o.logger.warn("fleet instance reaped", { instance, workers });
    }
  }

  /**
   * Removes `instance` and its workers from the fleet if it has been silent
   * for `silentMs` (the script checks, so only one instance does it), and
   * tells everyone; returns how many workers left.
   */
  async #reap(instance: string, silentMs: number): Promise<number> {
    const gone = await this.#eval(
      REAP,
      [
        this.#key("alive"),
        this.#key("workers"),
        this.#key("inst", ""),
        this.#key("synced"),
        this.#key("key", ""),
      ],
      [instance, silentMs, this.#o.clock.now(), this.#host?.keyHoldMs ?? 0],
    ) as RespValue[];
    for (let i = 0; i + 2 < gone.length; i += 3) {
      const [id, sid, g] = [text(gone[i])!, text(gone[i + 1])!, text(gone[i + 2])!];
      await this.#publishEvent({ t: "del", i: instance, id, sid, g });
      if (this.#host) this.#view.del(id, sid, g, this.#host);
    }
    return gone.length / 3;
  }

  async #heartbeatLoop(): Promise<void> {
    const every = Math.max(100, this.#o.ttlMs / 5);
    const signal = this.#stop.signal;
    while (!signal.aborted) {
      await delay(every, { signal, clock: this.#o.clock }).catch(() => {});
      if (signal.aborted || !this.up) continue;
      await this.#heartbeat().catch((error) => {
        if (!(error instanceof RedisUnavailableError || error instanceof RedisReplyError)) {
          this.#o.logger.warn("fleet heartbeat failed", { error: (error as Error).message });
        }
      });
    }
  }

  /** Leaves the fleet: our heartbeat goes (what is left of ours is reaped at once), Redis closes. */
  async close(): Promise<void> {
    this.#stop.abort();
    await Promise.all(this.#loops);
    if (this.#redis.up) {
      await this.#redis.command("ZADD", this.#key("alive"), 0, this.instance).catch(() => {});
      await this.#reap(this.instance, 0).catch(() => {});
    }
    await this.#redis.close();
  }
}
