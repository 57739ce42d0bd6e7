/**
 * The fleet's wire format in Redis: the stored record, the events on the
 * `events` channel, the envelope of a message for one worker on an
 * instance's own channel, and the Lua scripts that change the fleet's keys
 * atomically. Pure: no connection here.
 *
 * @module
 */

import type { LeaveReason } from "../protocol/messages.ts";
import type { WorkerRecord } from "./registry.ts";
import type { Ban } from "./revocations.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A worker's value in the `workers` hash. */
export interface Stored {
  i: string;
  r: WorkerRecord;
  t: number | null;
}

/** What the `events` channel carries (JSON). */
export type FleetEvent =
  | { t: "put"; i: string; r: WorkerRecord; rtt: number | null }
  /** `why`: "revoked" when the worker's key or id was revoked (its peers are told). */
  | { t: "del"; i: string; id: string; sid: string; g: string; why?: LeaveReason }
  /** A revocation (`fleet_bans.ts`). */
  | { t: "ban"; i: string; b: Ban }
  /** Revocations lifted. */
  | { t: "unban"; i: string; ids: string[] }
  /** Instance `i` has written all its sessions again (after Redis came back): these are all. */
  | { t: "sync"; i: string; ids: string[] };

/** What a message on an instance's own channel is. */
export const enum Kind {
  Message = 1,
  Binary = 2,
  Replaced = 3,
}

// Lua, run atomically by Redis. Key names are built from the prefix (no
// Redis Cluster: see docs/limits.md). The scripts that change a record
// publish its event themselves: every instance then hears the puts and
// removals of one id in the order Redis made them (two publishes after two
// scripts could cross, and an instance kept the older session for ever).
export const PUT = `
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

export const UPDATE = `
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old or cjson.decode(old).r.session_id ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[4])
return 1`;

export const REMOVE = `
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old or cjson.decode(old).r.session_id ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2] .. ARGV[3], ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[4])
return 1`;

export const HEARTBEAT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))`;

export const REAP = `
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
        if not k.s and (not k.h or k.h == o.r.session_id) then
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

export const CLAIM_KEY = `
local b = redis.call('GET', KEYS[1])
if b then
  local o = cjson.decode(b)
  if o.k ~= ARGV[1] then
    if not o.s or tonumber(ARGV[2]) - tonumber(o.s) < tonumber(ARGV[3]) then return o.k end
    redis.call('DEL', KEYS[1])
  end
end
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], cjson.encode({k = ARGV[1], h = ARGV[4]})) end
return false`;

export const RELEASE_KEY = `
local b = redis.call('GET', KEYS[1])
if not b then return 0 end
local o = cjson.decode(b)
-- Only the holding session starts the hold (bindings of versions before holders have none).
if o.k ~= ARGV[1] or (o.h and o.h ~= ARGV[4]) then return 0 end
redis.call('SET', KEYS[1], cjson.encode({k = ARGV[1], s = tonumber(ARGV[2])}), 'PX', math.max(1, tonumber(ARGV[3])))
return 1`;

/** A message for one worker of an instance. */
export interface Envelope {
  kind: Kind;
  workerId: string;
  group: string;
  payload: Uint8Array;
}

/** `[kind][id length][id][group length][group][payload]`. */
export function encodeEnvelope(e: Envelope): Uint8Array {
  const to = encoder.encode(e.workerId);
  const g = encoder.encode(e.group);
  const bytes = new Uint8Array(3 + to.length + g.length + e.payload.length);
  bytes[0] = e.kind;
  bytes[1] = to.length;
  bytes.set(to, 2);
  bytes[2 + to.length] = g.length;
  bytes.set(g, 3 + to.length);
  bytes.set(e.payload, 3 + to.length + g.length);
  return bytes;
}

/** The envelope in `bytes`, or undefined when they are too short for what they say. */
export function parseEnvelope(bytes: Uint8Array): Envelope | undefined {
  if (bytes.length < 3) return undefined;
  const toLength = bytes[1];
  const gAt = 2 + toLength;
  if (gAt >= bytes.length) return undefined;
  const gLength = bytes[gAt];
  const payloadAt = gAt + 1 + gLength;
  if (payloadAt > bytes.length) return undefined;
  return {
    kind: bytes[0] as Kind,
    workerId: decoder.decode(bytes.subarray(2, gAt)),
    group: decoder.decode(bytes.subarray(gAt + 1, payloadAt)),
    payload: bytes.subarray(payloadAt),
  };
}

/** The JSON in `bytes` (an event, a server message), or undefined when it is not JSON. */
export function parseJson<T>(bytes: Uint8Array): T | undefined {
  try {
    return JSON.parse(decoder.decode(bytes)) as T;
  } catch {
    return undefined;
  }
}

/**
 * Whether session `a` of a worker id is newer than `b`: registered later,
 * or at the same millisecond with the greater session id. The PUT script
 * orders sessions the same way, so Redis and every instance's memory agree
 * on which of two sessions of one id is the current one.
 */
export function newer(
  a: Pick<WorkerRecord, "connected_at" | "session_id">,
  b: Pick<WorkerRecord, "connected_at" | "session_id">,
): boolean {
  return a.connected_at > b.connected_at ||
    (a.connected_at === b.connected_at && a.session_id > b.session_id);
}
