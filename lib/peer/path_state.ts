/**
 * A link's path (iroh's `path_state`): the one it sends on — the relay, or
 * a direct pair (our socket, the peer's address) — with its RTT, how it was
 * chosen (the first working one, the round's clearly fastest, the hard
 * side's nomination, roaming), its upkeep (a keepalive every 5 s, lost after
 * 3 s unanswered), and every other path the peer was heard on, whose
 * packets are taken too (see `paths.ts`).
 *
 * @module
 */

import type { Clock, TimerId } from "../core/clock.ts";
import type { PathKind, UdpAddress } from "../protocol/messages.ts";
import { newNonce } from "./frame.ts";
import type { LinkEvent } from "./link_events.ts";
import { clearlyFaster, pathKey, ValidatedPaths } from "./paths.ts";
import type { PunchRound } from "./punch_round.ts";
import { LINK_TIMING } from "./timing.ts";

type Path =
  | { kind: "relay" }
  /** `rttMs` is null until measured (a path taken by nomination). */
  | { kind: "direct"; to: UdpAddress; via: number; rttMs: number | null };

/** `ip:port`, `[ip]:port` for IPv6. */
export const show = (a: UdpAddress) =>
  a.ip.includes(":") ? `[${a.ip}]:${a.port}` : `${a.ip}:${a.port}`;

/** What the path state needs of its link. */
export interface PathHost {
  clock: Clock;
  /** A timer that never fires once the link closed. */
  timer(fn: () => void, ms: number): TimerId;
  /** Whether socket `via` is open (0, the main one, always is). */
  isOpen(via: number): boolean;
  /** Whether a round checks from socket `via` (the main one, a reroll's); else a hard-side extra. */
  isPrimary(via: number): boolean;
  /** Sends a check (`probe` or `nominate`) under the session, if there is one. */
  sendCheck(type: "probe" | "nominate", nonce: string, to: UdpAddress, via: number): boolean;
  /** The round under way, if any. */
  probing(): PunchRound | undefined;
  /** Ends the round, keeping socket `keepVia`. */
  stopProbing(keepVia?: number): void;
  closeSockets(vias: number[]): void;
  /** Asks for a new introduction later / no longer. */
  scheduleUpgrade(): void;
  clearUpgrade(): void;
  /** The path's kind changed (for the rendezvous's path reports). */
  onPath(path: PathKind, rttMs: number | null): void;
  /** The validated paths changed (the peer manager re-indexes them). */
  onPaths(): void;
  trace(event: LinkEvent): void;
  /** The path went direct for the first time ever (stats). */
  wentDirect(): void;
}

/** One link's path. */
export class PathState {
  #h: PathHost;
  #path: Path = { kind: "relay" };
  /** Every path the peer's authenticated frames came by; the path above is one of them. */
  #paths = new ValidatedPaths();
  /** When the path in use last carried an authenticated frame of the peer's. */
  #heardAt = 0;
  /** The peer (the hard side) nominated our path: its choice holds. */
  #following = false;
  /**
   * We are the hard side and keep one socket: every keepalive nominates
   * the path we kept, so the easy side sends there, not to a mapping of a
   * socket we closed (even when we kept the main one).
   */
  #nominating = false;
  #keepaliveTimer?: TimerId;
  #lostTimer?: TimerId;
  #keepaliveNonce?: string;

  /** The relay, until a round finds a direct path. */
  constructor(host: PathHost) {
    this.#h = host;
  }

  /** The kind of path in use. */
  get kind(): PathKind {
    return this.#path.kind;
  }

  /** RTT of the direct path, if any. */
  get rttMs(): number | null {
    return this.#path.kind === "direct" ? this.#path.rttMs : null;
  }

  /** The direct path's peer address and our socket (`via`), if there is one. */
  get direct(): { to: UdpAddress; via: number } | null {
    const path = this.#path;
    return path.kind === "direct" ? { to: path.to, via: path.via } : null;
  }

  /** Every validated path (`via|ip|port`), the one in use included. */
  get validated(): string[] {
    const keys = this.#paths.keys();
    const path = this.#path;
    if (path.kind === "direct" && !this.#paths.get(path.to, path.via)) {
      keys.push(pathKey(path.to, path.via));
    }
    return keys;
  }

  /** How many paths are validated. */
  get validatedCount(): number {
    return this.#paths.size;
  }

  /** Whether the peer nominated our path (its choice holds). */
  get following(): boolean {
    return this.#following;
  }

  /** A new introduction: the previous one's nomination no longer holds. */
  newSession(): void {
    this.#following = false;
    this.#nominating = false;
  }

  /** Whether `to`/`via` is the path in use. */
  isPathTo(to: UdpAddress, via: number): boolean {
    const path = this.#path;
    return path.kind === "direct" && path.to.ip === to.ip && path.to.port === to.port &&
      path.via === via;
  }

  /** Whether the peer was heard since `since` on a socket `ours` accepts. */
  heardSince(since: number, ours: (via: number) => boolean): boolean {
    return this.#paths.latest(since, (p) => ours(p.via)) !== undefined;
  }

  /** Sockets `vias` closed: their paths go. */
  dropSockets(vias: number[]): void {
    if (this.#paths.dropSockets(vias)) this.#h.onPaths();
  }

  /** An answered check measured `rttMs` on `to`/`via`. */
  measured(to: UdpAddress, via: number, rttMs: number): void {
    if (this.#h.isOpen(via)) this.#paths.heard(to, via, this.#h.clock.now(), rttMs);
  }

  /** An answered check of the round: the first working path is taken at once. */
  select(to: UdpAddress, via: number, rttMs: number): void {
    const h = this.#h;
    if (!h.isOpen(via)) return; // a late answer on a socket closed since
    const current = this.#path;
    if (current.kind === "direct") {
      const same = current.to.ip === to.ip && current.to.port === to.port && current.via === via;
      if (same) {
        current.rttMs = current.rttMs === null ? rttMs : 0.8 * current.rttMs + 0.2 * rttMs;
        return;
      }
      // The first working path carries traffic at once; the round's fastest
      // is chosen once, when it settles (#chooseFastest), never on each
      // sample: early samples are noisy (crypto, a loaded machine), and
      // every move sends the peer's replies another way.
      return;
    }
    const probing = h.probing();
    this.#path = { kind: "direct", to, via, rttMs };
    this.#heardAt = h.clock.now();
    h.wentDirect();
    h.trace({
      type: "direct",
      to: show(to),
      via,
      rtt_ms: rttMs,
      probes: probing?.probes ?? 0,
      round: probing?.round ?? 0,
    });
    h.onPath("direct", rttMs);
    if (probing && !probing.done) {
      probing.schedule(() => this.#settled(probing), LINK_TIMING.settleMs);
    }
    h.clearUpgrade();
    this.#armKeepalive();
  }

  /** The round settled on the path in use. */
  #settled(probing: PunchRound): void {
    const path = this.#path;
    if (path.kind !== "direct") return;
    // The easy side does not choose among the hard side's sockets: that
    // side keeps one and nominates it.
    if (probing.strategy !== "easy-side") this.#chooseFastest();
    const kept = (this.#path as { via: number }).via;
    this.#h.stopProbing(kept);
    // The hard side keeps one socket of many: nominate it at once.
    if (!this.#h.isPrimary(kept) || probing.strategy === "hard-side") {
      this.#nominating = true;
      this.keepalive();
    }
  }

  /**
   * Moves once to the round's fastest checked path, if that is clearly
   * faster than the one in use (20 % and 2 ms), as Tailscale's `betterAddr`
   * does; near-equal paths (two addresses of one host) never move it.
   */
  #chooseFastest(): void {
    const path = this.#path;
    // The peer nominated the path it keeps: our own checks do not move it.
    // A path through an extra socket (the hard side's) stays: the peer aims
    // at that socket's mapping, and the others are about to close.
    if (path.kind !== "direct" || this.#following || !this.#h.isPrimary(path.via)) return;
    const current = this.#paths.get(path.to, path.via)?.bestRttMs ?? null;
    if (current === null) return;
    const best = this.#paths.fastest((p) => this.#h.isOpen(p.via));
    if (!best || !clearlyFaster(best.bestRttMs!, current)) return;
    this.#path = { kind: "direct", to: best.to, via: best.via, rttMs: best.bestRttMs };
    this.#heardAt = best.heardAt;
    this.#h.trace({
      type: "direct",
      to: show(best.to),
      via: best.via,
      rtt_ms: best.bestRttMs,
      probes: this.#h.probing()?.probes ?? 0,
      moved: "faster",
    });
  }

  // ---- upkeep ---------------------------------------------------------------

  #armKeepalive(): void {
    if (this.#keepaliveTimer !== undefined) this.#h.clock.clearTimeout(this.#keepaliveTimer);
    this.#keepaliveTimer = this.#h.timer(() => this.keepalive(), LINK_TIMING.keepaliveMs);
  }

  /** Sends a keepalive now and re-arms the timer (also when called off it). */
  keepalive(): void {
    const path = this.#path;
    if (path.kind !== "direct") return;
    const nonce = newNonce();
    // From the hard side (an extra socket, or the main one it kept), every keepalive nominates.
    const type = this.#nominating || !this.#h.isPrimary(path.via) ? "nominate" : "probe";
    if (!this.#h.sendCheck(type, nonce, path.to, path.via)) return;
    this.#keepaliveNonce = nonce;
    if (this.#lostTimer === undefined) {
      this.#lostTimer = this.#h.timer(() => this.#lost(), LINK_TIMING.lostAfterMs);
    }
    this.#armKeepalive();
  }

  /** An ack: true when it answers our keepalive (the path works; its RTT is measured). */
  keepaliveAnswered(nonce: string, rttMs: number): boolean {
    if (nonce !== this.#keepaliveNonce) return false;
    this.#keepaliveNonce = undefined;
    this.heard();
    const path = this.#path;
    if (path.kind === "direct") {
      path.rttMs = path.rttMs === null ? rttMs : 0.8 * path.rttMs + 0.2 * rttMs;
    }
    return true;
  }

  #lost(): void {
    this.#lostTimer = undefined;
    const h = this.#h;
    const path = this.#path;
    if (path.kind !== "direct") return;
    h.trace({ type: "path_lost", to: show(path.to) });
    if (this.#paths.drop(path.to, path.via)) h.onPaths();
    // Another path the peer was heard on lately (its NAT rebound, say)
    // takes over before the relay does; a keepalive confirms it at once.
    const since = h.clock.now() - LINK_TIMING.lostAfterMs;
    const alive = this.#paths.latest(since, (p) => p.via === 0 || p.via === path.via);
    if (alive && h.isOpen(alive.via)) {
      this.#path = { kind: "direct", to: alive.to, via: alive.via, rttMs: path.rttMs };
      this.#heardAt = alive.heardAt;
      h.trace({
        type: "direct",
        to: show(alive.to),
        via: alive.via,
        rtt_ms: path.rttMs,
        probes: 0,
        moved: "roamed",
      });
      this.keepalive();
      return;
    }
    if (this.#keepaliveTimer !== undefined) h.clock.clearTimeout(this.#keepaliveTimer);
    this.#keepaliveTimer = undefined;
    h.closeSockets([path.via, ...(h.probing()?.extra.splice(0) ?? [])]);
    this.#path = { kind: "relay" };
    h.trace({ type: "relay" });
    h.onPath("relay", null);
    h.scheduleUpgrade();
  }

  /** The path in use is proven (an authenticated frame by it, or an answered keepalive). */
  heard(): void {
    this.#heardAt = this.#h.clock.now();
    if (this.#lostTimer !== undefined) this.#h.clock.clearTimeout(this.#lostTimer);
    this.#lostTimer = undefined;
  }

  // ---- the peer's frames ------------------------------------------------------

  /** An authenticated frame came by `from`/`via`: a validated path, and proof of the one in use. */
  validate(from: UdpAddress, via: number): void {
    if (!this.#h.isOpen(via)) return;
    if (this.#paths.heard(from, via, this.#h.clock.now())) this.#h.onPaths();
    if (this.isPathTo(from, via)) this.heard();
  }

  /**
   * An authenticated probe or data frame came from `from`: if the direct
   * path points elsewhere and has gone quiet, follow the peer there (its NAT
   * rebound), as WireGuard's roaming does. A path that answers stays: the
   * peer may send by another of its paths.
   */
  roam(from: UdpAddress, via: number): void {
    const h = this.#h;
    const path = this.#path;
    if (path.kind !== "direct" || !h.isOpen(via)) return;
    if (path.to.ip === from.ip && path.to.port === from.port && path.via === via) return;
    const probing = h.probing();
    if (probing && !probing.done) return; // still choosing: acks decide
    if (h.clock.now() - this.#heardAt < LINK_TIMING.roamQuietMs) return;
    this.#path = { kind: "direct", to: from, via, rttMs: path.rttMs };
    this.#heardAt = h.clock.now();
    h.trace({
      type: "direct",
      to: show(from),
      via,
      rtt_ms: path.rttMs,
      probes: 0,
      moved: "roamed",
    });
  }

  /**
   * The peer nominated the path its frame came on (it is the hard side and
   * keeps only that socket): use it, and stop choosing on our own.
   */
  follow(from: UdpAddress, via: number): void {
    const h = this.#h;
    if (!h.isOpen(via)) return;
    this.#following = true;
    const probing = h.probing();
    if (probing && !probing.done) h.stopProbing(via);
    if (this.isPathTo(from, via)) return this.heard();
    const path = this.#path;
    const rttMs = path.kind === "direct" ? path.rttMs : null;
    this.#path = { kind: "direct", to: from, via, rttMs };
    h.wentDirect();
    h.trace({
      type: "direct",
      to: show(from),
      via,
      rtt_ms: rttMs,
      probes: probing?.probes ?? 0,
      nominated: true,
    });
    if (path.kind !== "direct") h.onPath("direct", null);
    h.clearUpgrade();
    this.heard();
    this.keepalive(); // confirms the path and measures its RTT at once
  }

  /** Stops the upkeep's timers. */
  close(): void {
    for (const t of [this.#keepaliveTimer, this.#lostTimer]) {
      if (t !== undefined) this.#h.clock.clearTimeout(t);
    }
  }
}
