/**
 * One probing round of a link: the opening stages (low-TTL packets that
 * make our NAT's mappings before anything of ours can reach the peer's
 * NAT), then the full-TTL checks, the hard side's extra sockets or the easy
 * side's spray, each bounded (see {@linkcode LINK_TIMING}). The round only
 * sends; the link hears the answers, selects the path and ends the round.
 *
 * @module
 */

import type { Clock, TimerId } from "../core/clock.ts";
import type { Candidate, NatMapping, UdpAddress } from "../protocol/messages.ts";
import type { Frame } from "./frame.ts";
import type { LinkEvent } from "./link_events.ts";
import type { Strategy } from "./strategy.ts";
import { LINK_TIMING, openingLadder } from "./timing.ts";

/** Spray probes sent together (one timer for five: the spray's pace is unchanged). */
const SPRAY_BATCH = 5;

/** What a round needs of its link. */
export interface RoundHost {
  clock: Clock;
  random(): number;
  /** A timer that never fires once the link closed. */
  timer(fn: () => void, ms: number): TimerId;
  /** Whether opening packets can be sent at all (a low TTL needs `node:dgram`). */
  opening: boolean;
  /** The highest TTL of opening packets. */
  openingTtl: number;
  /**
   * Sends a check to `to` from socket `via` (`ttl` > 0: an opening packet;
   * resolves once sent); false when the worker's pace let it not go.
   */
  probe(
    round: PunchRound,
    to: UdpAddress,
    via: number,
    counted?: boolean,
    ttl?: number,
  ): Promise<unknown> | false;
  /** Sends a frame through the relay. */
  sendRelay(frame: Frame): void;
  /** Opens up to `count` extra sockets (the link keeps track of them). */
  openSockets(count: number): number[];
  /** Every strategy of the round ran out: the link decides when it failed. */
  maybeGiveUp(round: PunchRound): void;
  /** The link's current session: a round of another one stops. */
  sessionId(): string | undefined;
  /** The peer's latest `opened`. */
  peerOpened(): { session: string; round: number; ttl: number; last: boolean } | undefined;
  trace(event: LinkEvent): void;
}

/** What a round punches toward. */
export interface RoundPlan {
  /** Candidates checked one after another. */
  checks: Candidate[];
  /** The peer's public candidates (the hard side's and the spray's target). */
  publics: Candidate[];
  /** Our role in the introduction (rerolled rounds take turns to open first). */
  role: "initiator" | "responder";
  peerNat: NatMapping | null;
}

/** One probing round. */
export class PunchRound {
  /** The introduction's session. */
  readonly session: string;
  /** 0: the introduction's round; then one per reroll. */
  readonly round: number;
  /** Our socket for checks and sprays. */
  readonly via: number;
  readonly strategy: Strategy;
  readonly startedAt: number;
  /** Set while a reroll remains: the round gives up this long after it began. */
  limitMs?: number;
  /** Set when the round's time was extended (once) for answers in flight: until when. */
  gracedUntil?: number;
  /** Checks sent, by nonce: an ack must name one. */
  readonly sent = new Map<string, { to: UdpAddress; via: number }>();
  /** Paths a triggered check is being retransmitted on (`via/ip/port`). */
  readonly triggered = new Set<string>();
  /** Checks counted toward the bound. */
  probes = 0;
  /**
   * The round's pending timers (cleared when it stops). Fired ones leave:
   * Deno's timer handles are objects, and a round that kept every one of its
   * checks' would hold ~400 bytes per check until it ended.
   */
  readonly #timers = new Set<TimerId>();
  /** Extra sockets of the round (closed with it, but the one a path keeps). */
  extra: number[];
  done = false;
  /** The round ended without a path (its late answers are stale). */
  failed = false;
  #h: RoundHost;
  #plan?: RoundPlan;
  #ladder: number[] = [];
  #next = 0;
  #begun = false;
  #openedMs: number | null = null;
  #sprayed = 0;
  #hardExtra: number[] = [];
  #fired = 0;
  #full = true;
  #stage = -1;
  #sending = false;
  /** The peer's `opened` of this round came: it runs our punching, it is no mere registrant. */
  #live = false;
  /** Doublings of the loops' waits while the pace holds this round back. */
  #slowed = 0;

  /** A round of `session` (round `round`) from socket `via`. */
  constructor(h: RoundHost, session: string, round: number, via: number, strategy: Strategy) {
    this.#h = h;
    this.session = session;
    this.round = round;
    this.via = via;
    this.strategy = strategy;
    this.startedAt = h.clock.now();
    // A reroll's fresh socket goes with its round, unless the path keeps it.
    this.extra = via === 0 ? [] : [via];
  }

  /** Runs `fn` in `ms` unless the round stops first. */
  schedule(fn: () => void, ms: number): void {
    const id = this.#h.timer(() => {
      this.#timers.delete(id);
      fn();
    }, ms);
    this.#timers.add(id);
  }

  /** Cancels the round's pending timers. */
  clearTimers(): void {
    for (const id of this.#timers) this.#h.clock.clearTimeout(id);
    this.#timers.clear();
  }

  /**
   * Starts the round: opening packets first (our mappings toward every
   * candidate, in stages of rising TTL, before any full-TTL packet of ours
   * can reach the peer's NAT), then the checks.
   */
  run(plan: RoundPlan): void {
    const h = this.#h;
    this.#plan = plan;
    this.#ladder = h.opening ? openingLadder(h.openingTtl) : [];
    // The hard side's extra sockets: opened with each stage, then once a
    // round at the top TTL. A peer without NAT has nothing to poison:
    // full-TTL probes reach it at once. Else a full-TTL probe from each
    // would reach the peer's NAT first and, on a router that does not filter
    // its input, clash with the very mapping the peer opens toward that
    // socket when its spray finds it; so they only ever open, and the easy
    // side's sprays find one.
    this.#full = !h.opening || plan.peerNat === "no-nat";
    // The sockets themselves wait for the peer's first `opened` (see #live).
    if (this.strategy === "hard-side") this.#fireHard();
    if (!h.opening) return this.#begin("no_opening");
    this.advance();
    this.schedule(() => this.#begin("timeout"), LINK_TIMING.openedWaitMs);
  }

  /** Full-TTL checks (and sprays) start: the peer's opening packets are out, or it never said. */
  #begin(after: "peer_opened" | "timeout" | "no_opening"): void {
    if (this.#begun || this.done) return;
    this.#begun = true;
    // Without opening stages, one `opened` still says we are here (the hard
    // side's sockets wait for it): TTL 1, which opens nothing, and last.
    if (after === "no_opening") {
      this.#h.sendRelay({
        type: "opened",
        sessionId: this.session,
        ttl: 1,
        last: true,
        round: this.round,
        time: this.#h.clock.now(),
      });
    }
    this.#h.trace({ type: "checks", after, opened_ms: this.#openedMs });
    this.#check();
    if (this.strategy === "easy-side") this.#spray();
  }

  /**
   * How long until a loop's next send: `ms` while the worker's pace lets
   * this round's packets go, doubling (to 16×) while it does not, so 500
   * rounds at once wake a few hundred times a second, not 10,000.
   */
  #paced(went: boolean, ms: number): number {
    this.#slowed = went ? 0 : Math.min(this.#slowed + 1, 4);
    return ms * 2 ** this.#slowed;
  }

  /** One ICE-style check, round robin over the candidates, every 50 ms. */
  #check(): void {
    if (this.done || this.probes >= LINK_TIMING.maxProbes) return this.#h.maybeGiveUp(this);
    const checks = this.#plan!.checks;
    const went = this.#h.probe(this, checks[this.#next++ % checks.length], this.via) !== false;
    this.schedule(() => this.#check(), this.#paced(went, LINK_TIMING.probeIntervalMs));
  }

  /**
   * The hard side: every extra socket probes the peer's public endpoint once
   * a round; a round that got fewer than it asked for (the worker's pool is
   * shared) takes those freed since.
   */
  #fireHard(): void {
    if (this.done || this.#fired++ >= LINK_TIMING.hardRounds) return this.#h.maybeGiveUp(this);
    if (this.#fired > 1) this.#takeSockets();
    if (this.#fired > 1 || this.#full) {
      const ttl = this.#full ? 0 : this.#ladder.at(-1)!;
      for (const v of this.#hardExtra) this.#h.probe(this, this.#plan!.publics[0], v, false, ttl);
    }
    this.schedule(() => this.#fireHard(), LINK_TIMING.hardRoundMs);
  }

  /**
   * The hard side takes its extra sockets from the worker's pool once the
   * peer is live (#live), up to `hardSockets`, again each hard round as
   * other rounds free theirs; returns the new ones.
   */
  #takeSockets(): number[] {
    const missing = LINK_TIMING.hardSockets - this.#hardExtra.length;
    if (!this.#live || missing <= 0 || this.done) return [];
    const more = this.#h.openSockets(missing);
    this.#hardExtra.push(...more);
    this.extra.push(...more);
    return more;
  }

  /** The easy side: a probe at a random port of the peer's public IP, every 2 ms (five each 10 ms). */
  #spray(): void {
    if (this.done || this.#sprayed >= LINK_TIMING.sprayMax) return this.#h.maybeGiveUp(this);
    const span = 65536 - LINK_TIMING.sprayPortMin;
    let went = true;
    for (let i = 0; i < SPRAY_BATCH && went && this.#sprayed < LINK_TIMING.sprayMax; i++) {
      this.#sprayed++;
      const port = LINK_TIMING.sprayPortMin + Math.floor(this.#h.random() * span);
      went = this.#h.probe(this, { ip: this.#plan!.publics[0].ip, port }, this.via, false) !==
        false;
    }
    const ms = LINK_TIMING.sprayIntervalMs * SPRAY_BATCH;
    this.schedule(() => this.#spray(), this.#paced(went, ms));
  }

  /**
   * The next opening stage, when it may go. Stage k sends at TTL ladder[k]
   * and says so (`opened`, through the relay); stage k + 1 waits until the
   * peer has said the same of a TTL at least ladder[k] (or that it is done):
   * a packet of ours that reaches the peer's NAT then finds the peer's own
   * mapping toward us there and is let in, not taken by the router. On a
   * segment the NATs share, the second stage does just that. Full-TTL
   * checks wait for the peer's last stage. There even the first stage
   * reaches the other NAT, and a router that does not filter its input
   * takes it if its own side has not sent yet. So rerolled rounds take turns
   * to go first (round 1 the initiator, round 2 the responder, …): with one
   * such router of the two, the round where its side opens first works.
   * Called again whenever the peer's `opened` arrives.
   */
  advance(): void {
    const h = this.#h;
    const plan = this.#plan;
    if (!plan || this.done || this.#sending || h.sessionId() !== this.session) return;
    const opened = h.peerOpened();
    const peer = opened?.session === this.session && opened.round === this.round
      ? opened
      : undefined;
    const ladder = this.#ladder;
    // The peer is live: its authenticated `opened` of this round came. Only
    // then does the hard side hold sockets for it, so a member that only
    // asks for introductions (or 500 of them) costs the worker none.
    if (peer && !this.#live) {
      this.#live = true;
      if (this.strategy === "hard-side") {
        const ttl = this.#full ? 0 : ladder.at(-1)!;
        for (const v of this.#takeSockets()) void h.probe(this, plan.publics[0], v, false, ttl);
      }
    }
    if (this.#stage === ladder.length - 1) {
      if (peer?.last) this.#begin("peer_opened");
      return;
    }
    const second = this.round > 0 && (this.round % 2 === 1) === (plan.role === "responder");
    if (this.#stage === -1 && second && !peer) return;
    const stage = this.#stage;
    if (stage >= 0 && !(peer && (peer.last || peer.ttl >= ladder[stage]))) return;
    this.#stage++;
    this.#sending = true;
    const ttl = ladder[this.#stage];
    // (The hard side's extra sockets open apart from the stages, once the
    // peer is live, at the top TTL: above.)
    const sends = plan.checks.map((to) => h.probe(this, to, this.via, false, ttl));
    void Promise.all(sends).then(() => {
      this.#sending = false;
      if (this.done || h.sessionId() !== this.session) return;
      const last = this.#stage === ladder.length - 1;
      if (last) this.#openedMs = h.clock.now() - this.startedAt;
      h.sendRelay({
        type: "opened",
        sessionId: this.session,
        ttl,
        last,
        round: this.round,
        time: h.clock.now(),
      });
      this.advance();
    });
  }
}
