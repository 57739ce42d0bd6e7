/**
 * The direct paths a link has validated: every (our socket, peer address)
 * pair an authenticated frame of the peer's came by, when it was last
 * heard, and the fastest round trip a check measured on it.
 *
 * A link sends on one path and keeps it until another is clearly better
 * (Tailscale's `betterAddr`: a margin, never any lower sample), yet takes
 * the peer's packets from every path here (magicsock does the same): two
 * hosts with several working addresses each then settle on one path each
 * way, and a packet that came by another working path is not lost.
 *
 * Pure bookkeeping, no I/O.
 *
 * @module
 */

import type { UdpAddress } from "../protocol/messages.ts";

/** Validated paths kept per link: the oldest heard goes first beyond this. */
export const MAX_VALIDATED_PATHS = 8;

/** One validated path. */
export interface ValidatedPath {
  to: UdpAddress;
  via: number;
  /** Clock time it last carried an authenticated frame of the peer's. */
  heardAt: number;
  /** The fastest check round trip measured on it, if any. */
  bestRttMs: number | null;
}

/** `via|ip|port`: how the peer manager indexes paths for transport packets. */
export function pathKey(to: UdpAddress, via: number): string {
  return `${via}|${to.ip}|${to.port}`;
}

/**
 * Whether a path measured at `candidateMs` is clearly faster than one at
 * `currentMs`: 20 % and 2 ms (jitter between near-equal paths, as two
 * addresses of one host are, never moves a path).
 */
export function clearlyFaster(candidateMs: number, currentMs: number): boolean {
  return candidateMs <= currentMs * 0.8 && currentMs - candidateMs >= 2;
}

/** The validated paths of one link. */
export class ValidatedPaths {
  #paths = new Map<string, ValidatedPath>();

  /**
   * An authenticated frame came by `to`/`via` at `now` (with a check's round
   * trip, for an answered check). Returns true when the path is new here.
   */
  heard(to: UdpAddress, via: number, now: number, rttMs?: number): boolean {
    const key = pathKey(to, via);
    const known = this.#paths.get(key);
    if (known) {
      known.heardAt = now;
      if (rttMs !== undefined) {
        known.bestRttMs = known.bestRttMs === null ? rttMs : Math.min(known.bestRttMs, rttMs);
      }
      return false;
    }
    if (this.#paths.size >= MAX_VALIDATED_PATHS) {
      let oldest: string | undefined;
      let at = Infinity;
      for (const [k, p] of this.#paths) if (p.heardAt < at) [oldest, at] = [k, p.heardAt];
      this.#paths.delete(oldest!);
    }
    this.#paths.set(key, { to, via, heardAt: now, bestRttMs: rttMs ?? null });
    return true;
  }

  /** The path `to`/`via`, if validated. */
  get(to: UdpAddress, via: number): ValidatedPath | undefined {
    return this.#paths.get(pathKey(to, via));
  }

  /** Forgets every path through the sockets `vias` (closed). Returns whether any went. */
  dropSockets(vias: readonly number[]): boolean {
    let dropped = false;
    for (const [key, path] of this.#paths) {
      if (vias.includes(path.via)) dropped = this.#paths.delete(key) || dropped;
    }
    return dropped;
  }

  /** Forgets one path (it stopped answering). */
  drop(to: UdpAddress, via: number): boolean {
    return this.#paths.delete(pathKey(to, via));
  }

  /** The measured path with the fastest check, among those `usable` allows. */
  fastest(usable: (path: ValidatedPath) => boolean): ValidatedPath | undefined {
    let best: ValidatedPath | undefined;
    for (const path of this.#paths.values()) {
      if (path.bestRttMs === null || !usable(path)) continue;
      if (!best || path.bestRttMs < best.bestRttMs!) best = path;
    }
    return best;
  }

  /** The path heard last since `since`, among those `usable` allows. */
  latest(since: number, usable: (path: ValidatedPath) => boolean): ValidatedPath | undefined {
    let best: ValidatedPath | undefined;
    for (const path of this.#paths.values()) {
      if (path.heardAt < since || !usable(path)) continue;
      if (!best || path.heardAt > best.heardAt) best = path;
    }
    return best;
  }

  /** Every path's key (for the peer manager's index). */
  keys(): string[] {
    return [...this.#paths.keys()];
  }

  /** How many paths are validated. */
  get size(): number {
    return this.#paths.size;
  }
}
