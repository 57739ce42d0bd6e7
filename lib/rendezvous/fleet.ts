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
import type { ServerMessage } from "../protocol/messages.ts";
import type { KeyClaim, MemoryRegistry, Registry, WorkerPatch, WorkerRecord } from "./registry.ts";
import { RENDEZVOUS_DEFAULTS } from "./options.ts";

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
  /** A worker on another instance left the fleet. */
  left(workerId: string, group: string): void;
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

interface Stored {
  i: string;
  r: WorkerRecord;
  t: number | null;
}

type FleetEvent =
  | { t: "put"; i: string; r: WorkerRecord; rtt: number | null }
  | { t: "del"; i: string; id: string; sid: string; g: string }
  /** Instance `i` has written all its sessions again (after Redis came back): these are all. */
  | { t: "sync"; i: string; ids: string[] };

const enum Kind {
  Message = 1,
  Binary = 2,
  Replaced = 3,
}

// Lua, run atomically by Redis. Key names are built from the prefix (no
// Redis Cluster: see README, Limits). The scripts that change a record
// publish its event themselves: every instance then hears the puts and
// removals of one id in the order Redis made them (two publishes after two
// scripts could cross, and an instance kept the older session for ever).
const PUT = `
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local o = cjson.decode(old)
  local at = tonumber(o.r.connected_at)
  if o.i ~= ARGV[2] and (at > tonumber(ARGV[4]) or (at == tonumber(ARGV[4]) and o.r.session_id > ARGV[5])) then
    return {'newer', o.i, o.r.session_id}
  end
  if o.i ~= ARGV[2] then redis.call('SREM', KEYS[2] .. o.i, ARGV[1]) end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('SADD', KEYS[2] .. ARGV[2], ARGV[1])
  redis.call('PUBLISH', KEYS[3], ARGV[6])
  return {'replaced', o.i, o.r.session_id}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[2] .. ARGV[2], ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[6])
return {'new'}`;

const UPDATE = `
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old or cjson.decode(old).r.session_id ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[4])
return 1`;

const REMOVE = `
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old or cjson.decode(old).r.session_id ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2] .. ARGV[3], ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[4])
return 1`;

const HEARTBEAT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))`;

const REAP = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > now - tonumber(ARGV[2]) then return {} end
redis.call('ZREM', KEYS[1], ARGV[1])
local gone = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[3] .. ARGV[1])) do
  local v = redis.call('HGET', KEYS[2], id)
  if v then
    local o = cjson.decode(v)
    if o.i == ARGV[1] then
      redis.call('HDEL', KEYS[2], id)
      -- The reaped session ended: its key binding is held KEY_HOLD_SEC from now, as after any end.
      local b = redis.call('GET', KEYS[5] .. id)
      if b then
        local k = cjson.decode(b)
        if not k.s then
          redis.call('SET', KEYS[5] .. id, cjson.encode({k = k.k, s = tonumber(ARGV[3])}), 'PX', math.max(1, tonumber(ARGV[4])))
        end
      end
      table.insert(gone, id)
      table.insert(gone, o.r.session_id)
      table.insert(gone, o.r.group)
    end
  end
end
redis.call('DEL', KEYS[3] .. ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return gone`;

const CLAIM_KEY = `
local b = redis.call('GET', KEYS[1])
if b then
  local o = cjson.decode(b)
  if o.k ~= ARGV[1] then
    if not o.s or tonumber(ARGV[2]) - tonumber(o.s) < tonumber(ARGV[3]) then return o.k end
    redis.call('DEL', KEYS[1])
  end
end
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], cjson.encode({k = ARGV[1]})) end
return false`;

const RELEASE_KEY = `
local b = redis.call('GET', KEYS[1])
if not b or cjson.decode(b).k ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], cjson.encode({k = ARGV[1], s = tonumber(ARGV[2])}), 'PX', math.max(1, tonumber(ARGV[3])))
return 1`;

const encoder = new TextEncoder();
const decoder = new TextDecoder();
/**
 * Relayed packets Redis may owe replies for before more are dropped: about
 * 10 MB of 1,200-byte packets, a few hundred milliseconds at the rates
 * measured (bench:fleet), bounding what a flood can queue on the sender.
 */
const MAX_PUBLISHES_IN_FLIGHT = 8192;

/**
 * Whether session `a` of a worker id is newer than `b`: registered later,
 * or at the same millisecond with the greater session id. The PUT script
 * orders sessions the same way, so Redis and every instance's memory agree
 * on which of two sessions of one id is the current one.
 */
function newer(
  a: Pick<WorkerRecord, "connected_at" | "session_id">,
  b: Pick<WorkerRecord, "connected_at" | "session_id">,
): boolean {
  return a.connected_at > b.connected_at ||
    (a.connected_at === b.connected_at && a.session_id > b.session_id);
}

function randomId(): string {
  return [...crypto.getRandomValues(new Uint8Array(6))]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The fleet as one instance sees it. */
export class Fleet {
  /** This instance's id in the fleet (random unless given). */
  readonly instance: string;
  readonly #o: Required<Omit<FleetOptions, "caCerts" | "instance">> & { caCerts?: string[] };
  readonly #redis: Redis;
  #host?: FleetHost;
  #remote = new Map<string, RemoteWorker>();
  /**
   * Our own sessions, by worker id: an event about an older session of one
   * of them (it reached us after our own registration) is stale, never a
   * remote worker.
   */
  #local = new Map<string, Pick<WorkerRecord, "connected_at" | "session_id">>();
  /** Removals Redis missed while it was away: written once it is back. */
  #missedRemovals = new Map<string, { sessionId: string; group: string }>();
  /** Key releases Redis missed while it was away (the hold counts from the session's end). */
  #missedReleases = new Map<string, { key: string; at: number; holdMs: number }>();
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
    this.instance = options.instance ?? randomId();
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
    this.#local.set(record.worker_id, {
      connected_at: record.connected_at,
      session_id: record.session_id,
    });
    this.#remote.delete(record.worker_id);
    this.#missedRemovals.delete(record.worker_id);
    this.#missedReleases.delete(record.worker_id); // bound again, by this session
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
  remove(workerId: string, sessionId: string, group: string): boolean {
    if (this.#local.get(workerId)?.session_id === sessionId) this.#local.delete(workerId);
    // Redis removes the record only if it is still this session's (the
    // script checks), so the removal goes there even when the worker has
    // moved: skipping it on a stale copy of an older session left the
    // record in Redis, and on every instance, for ever.
    if (!this.#redis.up) this.#missedRemovals.set(workerId, { sessionId, group });
    this.#soft(() => this.#remove(workerId, sessionId, group));
    return !this.#remote.has(workerId);
  }

  /** `missed`: the removal happened while Redis was away (which may have come back empty). */
  async #remove(workerId: string, sessionId: string, group: string, missed = false): Promise<void> {
    const event: FleetEvent = {
      t: "del",
      i: this.instance,
      id: workerId,
      sid: sessionId,
      g: group,
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

  // ---- keys ----------------------------------------------------------------

  /**
   * {@linkcode Registry.claimKey} across the fleet.
   *
   * @throws {RedisUnavailableError} while Redis is away (the caller decides alone).
   */
  async claimKey(
    workerId: string,
    key: string | null,
    now: number,
    holdMs: number,
  ): Promise<KeyClaim> {
    const bound = await this.#eval(CLAIM_KEY, [this.#key("key", workerId)], [
      key ?? "",
      now,
      holdMs,
    ]);
    return bound === null ? { ok: true } : { ok: false, bound: text(bound)! };
  }

  /** {@linkcode Registry.releaseKey} across the fleet (best effort). */
  releaseKey(workerId: string, key: string, now: number, holdMs: number): void {
    // Missed while Redis is away, the binding would never expire: released again once it is back.
    if (!this.#redis.up) this.#missedReleases.set(workerId, { key, at: now, holdMs });
    this.#soft(() => this.#release(workerId, key, now, holdMs));
  }

  async #release(workerId: string, key: string, at: number, holdMs: number): Promise<void> {
    const left = Math.max(1, holdMs - (this.#o.clock.now() - at));
    await this.#eval(RELEASE_KEY, [this.#key("key", workerId)], [key, at, left]);
    if (this.#missedReleases.get(workerId)?.at === at) this.#missedReleases.delete(workerId);
  }

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
    const to = encoder.encode(workerId);
    const g = encoder.encode(group);
    const envelope = new Uint8Array(3 + to.length + g.length + payload.length);
    envelope[0] = kind;
    envelope[1] = to.length;
    envelope.set(to, 2);
    envelope[2 + to.length] = g.length;
    envelope.set(g, 3 + to.length);
    envelope.set(payload, 3 + to.length + g.length);
    this.stats.messages_sent++;
    await this.#redis.publish(this.#key("to", instance), envelope);
  }

  #onMessage(envelope: Uint8Array): void {
    const host = this.#host;
    if (!host || envelope.length < 3) return;
    const toLength = envelope[1];
    const gAt = 2 + toLength;
    if (gAt >= envelope.length) return;
    const gLength = envelope[gAt];
    const payloadAt = gAt + 1 + gLength;
    if (payloadAt > envelope.length) return;
    const workerId = decoder.decode(envelope.subarray(2, gAt));
    const group = decoder.decode(envelope.subarray(gAt + 1, payloadAt));
    const payload = envelope.subarray(payloadAt);
    this.stats.messages_received++;
    switch (envelope[0]) {
      case Kind.Message: {
        let message: ServerMessage;
        try {
          message = JSON.parse(decoder.decode(payload));
        } catch {
          return;
        }
        return host.deliver(workerId, group, message);
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
    let event: FleetEvent;
    try {
      event = JSON.parse(decoder.decode(payload));
    } catch {
      return;
    }
    if (event.i === this.instance) return;
    this.stats.events_received++;
    if (event.t === "put") this.#applyPut(event.i, event.r, event.rtt);
    else if (event.t === "del") this.#applyDel(event.id, event.sid, event.g);
    else if (event.t === "sync") {
      const ids = new Set(event.ids);
      for (const [workerId, worker] of [...this.#remote]) {
        if (worker.instance === event.i && !ids.has(workerId)) {
          this.#applyDel(workerId, worker.record.session_id, worker.record.group);
        }
      }
    }
  }

  #applyPut(instance: string, record: WorkerRecord, rttMs: number | null): void {
    // Events from different instances arrive in any order: one about an
    // older session than the one we hold (ours or another instance's) is stale.
    const mine = this.#local.get(record.worker_id);
    if (mine && !newer(record, mine)) return;
    const before = this.#remote.get(record.worker_id);
    if (before && before.record.session_id !== record.session_id && newer(before.record, record)) {
      return;
    }
    this.#remote.set(record.worker_id, { instance, record, rttMs });
    if (before?.record.session_id === record.session_id) this.#host?.updated(record);
    else this.#host?.joined(record);
  }

  #applyDel(workerId: string, sessionId: string, group: string): void {
    const before = this.#remote.get(workerId);
    if (!before || before.record.session_id !== sessionId) return;
    this.#remote.delete(workerId);
    this.#host?.left(workerId, group);
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
      for (const [workerId, { key, at, holdMs }] of [...this.#missedReleases]) {
        await this.#release(workerId, key, at, holdMs);
      }
      const local = await host.localRecords();
      // A Redis that came back empty lost our sessions' key bindings too: bind them again
      // (a no-op where they are still there), so no other key can take a connected id.
      const now = this.#o.clock.now();
      await Promise.all(
        local.filter((record) => record.key !== null).map((record) =>
          this.claimKey(record.worker_id, record.key, now, host.keyHoldMs)
        ),
      );
      await Promise.all(local.map((record) => this.#put(record)));
      // Ours are all in Redis again: others may trust its snapshot of us,
      // and drop what they hold of ours that is not in this list.
      await this.#redis.command("HSET", this.#key("synced"), this.instance, Date.now());
      await this.#publishEvent({ t: "sync", i: this.instance, ids: local.map((r) => r.worker_id) });
      await this.#resync();
      this.#synced = true;
      this.#o.logger.info("fleet synced", {
        instance: this.instance,
        local: local.length,
        remote: this.#remote.size,
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
    const liveInstances = new Set(alive.map((v) => text(v)!));
    const syncedInstances = new Set(synced.map((v) => text(v)!));
    const seen = new Set<string>();
    for (let i = 0; i + 1 < all.length; i += 2) {
      let stored: Stored;
      try {
        stored = JSON.parse(text(all[i + 1])!);
      } catch {
        continue;
      }
      if (stored.i === this.instance) continue;
      seen.add(stored.r.worker_id);
      const before = this.#remote.get(stored.r.worker_id);
      if (before?.record.session_id === stored.r.session_id && before.instance === stored.i) {
        continue;
      }
      this.#applyPut(stored.i, stored.r, stored.t);
    }
    for (const [workerId, worker] of [...this.#remote]) {
      if (seen.has(workerId)) continue;
      if (liveInstances.has(worker.instance) && !syncedInstances.has(worker.instance)) continue;
      this.#applyDel(workerId, worker.record.session_id, worker.record.group);
    }
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
      this.#applyDel(id, sid, g);
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
  async remove(workerId: string, sessionId: string): Promise<boolean> {
    const record = await this.local.get(workerId);
    if (!record || !(await this.local.remove(workerId, sessionId))) return false;
    return this.fleet.remove(workerId, sessionId, record.group);
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
    now: number,
    holdMs: number,
  ): Promise<KeyClaim> {
    if (this.fleet.up) {
      try {
        const claim = await this.fleet.claimKey(workerId, key, now, holdMs);
        if (claim.ok) await this.local.claimKey(workerId, key, now, 0);
        return claim;
      } catch (error) {
        if (!(error instanceof RedisUnavailableError)) throw error;
      }
    }
    return await this.local.claimKey(workerId, key, now, holdMs);
  }

  async releaseKey(workerId: string, key: string, now: number): Promise<void> {
    await this.local.releaseKey(workerId, key, now);
    this.fleet.releaseKey(workerId, key, now, this.#holdMs);
  }
}
