/**
 * Revocations across the fleet: `{prefix}:revoked`, a hash of ban id → ban
 * (JSON), written by scripts that also publish the change on the fleet's
 * `events` channel (`{t: "ban"}`, `{t: "unban"}`), so every instance hears
 * it at once and closes its sessions; an instance that starts, or whose
 * Redis comes back, reads the whole hash again. Lapsed bans are dropped as
 * they are read.
 *
 * @module
 */

import { type RespValue, text } from "../redis/client.ts";
import type { FleetStore } from "./fleet_keys.ts";
import type { FleetEvent } from "./fleet_wire.ts";
import { type Ban, type BanListener, type BanStore, parseBan } from "./revocations.ts";

/** Stores a ban and announces it, in one step (KEYS: hash, events; ARGV: id, ban, event). */
const PUT_BAN = `
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1`;

/** Removes bans and announces it (KEYS: hash, events; ARGV: event, ids…). */
const REMOVE_BANS = `
for i = 2, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1`;

const ALL_BANS = `return redis.call('HGETALL', KEYS[1])`;

/** The fleet's bans, in Redis. */
export class FleetBans implements BanStore {
  #s: FleetStore;
  #instance: string;
  #listener?: BanListener;

  /** Bans of the fleet `store` belongs to, as instance `instance`. */
  constructor(store: FleetStore, instance: string) {
    this.#s = store;
    this.#instance = instance;
  }

  /** Where other instances' bans go (the rendezvous's {@linkcode Revocations}). */
  listen(listener: BanListener): void {
    this.#listener = listener;
  }

  async put(ban: Ban): Promise<void> {
    const event: FleetEvent = { t: "ban", i: this.#instance, b: ban };
    await this.#s.eval(PUT_BAN, [this.#s.key("revoked"), this.#s.key("events")], [
      ban.id,
      JSON.stringify(ban),
      JSON.stringify(event),
    ]);
  }

  async remove(ids: readonly string[]): Promise<void> {
    const event: FleetEvent = { t: "unban", i: this.#instance, ids: [...ids] };
    await this.#s.eval(REMOVE_BANS, [this.#s.key("revoked"), this.#s.key("events")], [
      JSON.stringify(event),
      ...ids,
    ]);
  }

  async all(): Promise<Ban[]> {
    const flat = await this.#s.eval(ALL_BANS, [this.#s.key("revoked")], []) as RespValue[];
    const now = this.#s.clock.now();
    const bans: Ban[] = [];
    const lapsed: string[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      let ban: Ban | undefined;
      try {
        ban = parseBan(JSON.parse(text(flat[i + 1]) ?? ""));
      } catch {
        ban = undefined; // Not ours to read: skipped.
      }
      if (ban === undefined) continue;
      if (ban.expires_at !== null && ban.expires_at <= now) lapsed.push(ban.id);
      else bans.push(ban);
    }
    if (lapsed.length > 0) this.#s.soft(() => this.remove(lapsed));
    return bans;
  }

  /** A `ban` or `unban` event from another instance. */
  heard(event: FleetEvent): void {
    if (event.t === "ban") {
      const ban = parseBan(event.b);
      if (ban) this.#listener?.heard(ban);
    } else if (event.t === "unban" && Array.isArray(event.ids)) {
      this.#listener?.liftedElsewhere(event.ids.filter((id) => typeof id === "string"));
    }
  }

  /** Redis is back (or this instance just joined): read every ban again. */
  async reloaded(): Promise<void> {
    await this.#listener?.reload();
  }
}
