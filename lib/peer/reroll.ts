/**
 * Rerolls (hyperdht's word): after a round that found no path, each side
 * opens a fresh socket, learns its mapping with STUN, and sends its
 * candidates through the relay (`reroll`, with the round number); when
 * both have, the next round runs between the two fresh sockets. A socket
 * whose mapping a clash has moved punches from one it has not used yet.
 * Bounded: {@linkcode LINK_TIMING}`.rerolls` per introduction, and a peer
 * that never answers ours is given up on after `rerollWaitMs`.
 *
 * @module
 */

import type { Clock, TimerId } from "../core/clock.ts";
import type { Candidate } from "../protocol/messages.ts";
import { type Frame, MAX_REROLL_CANDIDATES } from "./frame.ts";
import type { LinkEvent } from "./link_events.ts";
import { LINK_TIMING } from "./timing.ts";

/** What rerolls need of their link. */
export interface RerollHost {
  clock: Clock;
  /** A timer that never fires once the link closed. */
  timer(fn: () => void, ms: number): TimerId;
  /** Opens a fresh socket and learns its candidates; null when it cannot. */
  openSocket(): Promise<{ via: number; candidates: Candidate[] } | null>;
  /** Whether a reroll of `session` still matters (the link's session, open, no direct path). */
  wanted(session: string): boolean;
  /** A fresh socket of ours joins the link (a round checks from it). */
  adopt(via: number): void;
  closeSockets(vias: number[]): void;
  sendRelay(frame: Frame): void;
  trace(event: LinkEvent): void;
  /** No reroll: the link asks for a new introduction later. */
  giveUp(): void;
  /** Both sides' fresh candidates are known: round `round` runs from `via` to `candidates`. */
  startRound(session: string, round: number, via: number, candidates: Candidate[]): void;
}

interface Mine {
  session: string;
  round: number;
  via?: number;
  started: boolean;
  timer?: TimerId;
}

/** A link's rerolls: ours, and the peer's latest. */
export class Rerolls {
  #h: RerollHost;
  #mine?: Mine;
  #peer?: { session: string; round: number; candidates: Candidate[] };

  /** Rerolls over `host`. */
  constructor(host: RerollHost) {
    this.#h = host;
  }

  /** Rerolls round `round` of `session` from a fresh socket of ours (once per round). */
  async start(session: string, round: number): Promise<void> {
    const current = this.#mine;
    if (current?.session === session && current.round >= round) return;
    this.cancel();
    const state: Mine = { session, round, started: false };
    this.#mine = state;
    const fresh = await this.#h.openSocket().catch(() => null);
    const stale = this.#mine !== state || !this.#h.wanted(session);
    if (fresh && stale) {
      // Taken first, so the link closes it: it closes only sockets it holds
      // (a reroll socket bound while the link closed was left open).
      this.#h.adopt(fresh.via);
      this.#h.closeSockets([fresh.via]);
    }
    if (stale) return;
    if (!fresh) {
      this.#mine = undefined;
      this.#h.trace({ type: "reroll_unanswered", round });
      return this.#h.giveUp();
    }
    state.via = fresh.via;
    this.#h.adopt(fresh.via);
    const candidates = fresh.candidates.slice(0, MAX_REROLL_CANDIDATES);
    this.#h.trace({ type: "reroll", round, via: fresh.via, candidates: candidates.length });
    this.#h.sendRelay({ type: "reroll", sessionId: session, round, candidates });
    state.timer = this.#h.timer(() => {
      if (this.#mine !== state || state.started) return;
      this.cancel();
      this.#h.trace({ type: "reroll_unanswered", round });
      this.#h.giveUp();
    }, LINK_TIMING.rerollWaitMs);
    this.#maybeStart();
  }

  /**
   * The peer's `reroll` (authenticated, through the relay): "ignore" when
   * it is replayed, out of bounds or comes too late (`direct`: a path we
   * still hear from stays); "joined" when it matches ours; else "follow":
   * the peer's round ran out before ours, so ours ends and we reroll too.
   */
  peerRerolled(
    frame: { sessionId: string; round: number; candidates: Candidate[] },
    direct: boolean,
  ): "ignore" | "joined" | "follow" {
    if (frame.round > LINK_TIMING.rerolls) return "ignore";
    const before = this.#peer;
    if (before?.session === frame.sessionId && before.round >= frame.round) return "ignore";
    this.#peer = { session: frame.sessionId, round: frame.round, candidates: frame.candidates };
    if (direct) return "ignore";
    const mine = this.#mine;
    if (mine?.session === frame.sessionId && mine.round === frame.round) {
      this.#maybeStart();
      return "joined";
    }
    return "follow";
  }

  /** Starts the rerolled round once both sides' fresh candidates are known. */
  #maybeStart(): void {
    const mine = this.#mine;
    const peer = this.#peer;
    if (!mine || mine.via === undefined || mine.started) return;
    if (!peer || peer.session !== mine.session || peer.round !== mine.round) return;
    mine.started = true;
    if (mine.timer !== undefined) this.#h.clock.clearTimeout(mine.timer);
    this.#h.startRound(mine.session, mine.round, mine.via, peer.candidates);
  }

  /** Drops a reroll of ours that has not begun its round (its socket closes). */
  cancel(): void {
    const mine = this.#mine;
    this.#mine = undefined;
    if (!mine || mine.started) return;
    if (mine.timer !== undefined) this.#h.clock.clearTimeout(mine.timer);
    if (mine.via !== undefined) this.#h.closeSockets([mine.via]);
  }
}
