/**
 * One link's punch rounds, from start to end: the first round of each
 * introduction, the reroll rounds after it, when a round has failed (every
 * strategy ran out, a grace for answers in flight, the peer rerolled first,
 * a clash suspected elsewhere), and what follows a failure (a reroll while
 * one remains, else a new introduction later).
 *
 * The link owns the sessions, the sockets and the path; this room decides
 * when rounds start and end, and sends nothing but their checks.
 *
 * @module
 */

import type { Clock, TimerId } from "../core/clock.ts";
import type { Candidate, NatMapping, PunchMessage, UdpAddress } from "../protocol/messages.ts";
import { type Frame, newNonce } from "./frame.ts";
import type { FailCause, LinkEvent } from "./link_events.ts";
import { PunchRound, type RoundHost } from "./punch_round.ts";
import { Rerolls } from "./reroll.ts";
import { planPunch } from "./strategy.ts";
import { LINK_TIMING } from "./timing.ts";

/** How long a round's longest strategy runs: its checks, or a birthday round's hard side and spray. */
function longestMs(birthday: boolean): number {
  return Math.max(
    LINK_TIMING.maxProbes * LINK_TIMING.probeIntervalMs,
    birthday ? LINK_TIMING.hardRounds * LINK_TIMING.hardRoundMs : 0,
    birthday ? LINK_TIMING.sprayMax * LINK_TIMING.sprayIntervalMs : 0,
  );
}

/** Paths of one round whose triggered checks are retransmitted (the rest are sent once). */
const MAX_TRIGGERED = 512;

/** What the rounds need to know of the introduction in use. */
export interface RoundsIntroduction {
  id: string;
  role: PunchMessage["role"];
  candidates: Candidate[];
  peerNat: NatMapping | null;
  ownNat: NatMapping | null;
  /** Our gateway mapped our socket (the peer checks that address). */
  ownMapped?: boolean;
}

/** What the rounds need from their link. */
export interface RoundsHost {
  clock: Clock;
  random(): number;
  /** A timer that never fires once the link closed. */
  timer(fn: () => void, ms: number): TimerId;
  trace(event: LinkEvent): void;
  /** The introduction in use. */
  introduction(): RoundsIntroduction | undefined;
  /** The link's direct path's socket, while it has one. */
  directVia(): number | undefined;
  /** Whether the peer's frames reached any socket `ours` accepts since `since` (clock ms). */
  heardSince(since: number, ours: (via: number) => boolean): boolean;
  /** Seals and sends a frame from socket `via` (`ttl` > 0: an opening packet). */
  sendUdp(frame: Frame, to: UdpAddress, via: number, ttl?: number): Promise<unknown>;
  /** Whether the worker's pace lets one more punching packet go now (skipped if not). */
  pace(): boolean;
  sendRelay(frame: Frame): void;
  /** Opens up to `count` extra sockets for a round. */
  openSockets(count: number): number[];
  /** Opens a reroll's fresh socket; absent: no rerolls. */
  openRerollSocket?(): Promise<{ via: number; candidates: Candidate[] } | null>;
  /** A reroll's socket is open: the link keeps it as one a round checks from. */
  adopt(via: number): void;
  closeSockets(vias: number[]): void;
  /** Every round failed: ask for a new introduction later. */
  scheduleUpgrade(): void;
  /** Whether opening packets can be sent, and their highest TTL. */
  opening: boolean;
  openingTtl: number;
  /** Counts a reroll round (the link's stats). */
  rerolled(): void;
}

/** The peer's latest `opened` frame. */
interface PeerOpened {
  session: string;
  round: number;
  ttl: number;
  last: boolean;
}

/** One link's rounds. */
export class Rounds {
  #h: RoundsHost;
  #current?: PunchRound;
  #roundHost: RoundHost;
  #rerolls: Rerolls;
  /** The peer's latest `opened` (it may come before our own round starts). */
  #peerOpened?: PeerOpened;

  /** The rounds of one link. */
  constructor(host: RoundsHost) {
    this.#h = host;
    this.#roundHost = {
      clock: host.clock,
      random: () => host.random(),
      timer: (fn, ms) => host.timer(fn, ms),
      opening: host.opening,
      openingTtl: host.openingTtl,
      probe: (round, to, via, counted, ttl) => this.probe(round, to, via, counted, ttl),
      sendRelay: (frame) => host.sendRelay(frame),
      openSockets: (count) => host.openSockets(count),
      maybeGiveUp: (round) => this.#maybeGiveUp(round),
      sessionId: () => host.introduction()?.id,
      peerOpened: () => this.#peerOpened,
      trace: (event) => host.trace(event),
    };
    this.#rerolls = new Rerolls({
      clock: host.clock,
      timer: (fn, ms) => host.timer(fn, ms),
      openSocket: () => host.openRerollSocket!(),
      wanted: (session) => host.introduction()?.id === session && host.directVia() === undefined,
      adopt: (via) => host.adopt(via),
      closeSockets: (vias) => host.closeSockets(vias),
      sendRelay: (frame) => host.sendRelay(frame),
      trace: (event) => host.trace(event),
      giveUp: () => host.scheduleUpgrade(),
      startRound: (session, n, via, candidates) => this.#start(session, { n, via, candidates }),
    });
  }

  /** The round in progress or last run, if any. */
  get current(): PunchRound | undefined {
    return this.#current;
  }

  /**
   * A new introduction: the round in progress and any reroll stop (a direct
   * path's socket, `keepVia`, stays) and its first round starts in `delayMs`.
   */
  introduced(sessionId: string, delayMs: number, keepVia: number | undefined): void {
    this.stop(keepVia);
    this.#rerolls.cancel();
    this.#h.timer(() => this.#start(sessionId), delayMs);
  }

  #start(
    sessionId: string,
    round?: { n: number; via: number; candidates: Candidate[] },
  ): void {
    const intro = this.#h.introduction();
    if (!intro || intro.id !== sessionId) return;
    const { n, via } = round ?? { n: 0, via: 0 };
    // A reroll's candidates come from the peer's frame, not the rendezvous: a
    // public one is vouched only at an IP the introduction vouched for (the
    // same NAT, a fresh port), so no frame can widen where we spray.
    const vouchedIps = new Set(
      intro.candidates.filter((c) => c.kind === "public" && c.vouched !== false).map((c) => c.ip),
    );
    const candidates = round
      ? round.candidates.map((c) =>
        c.kind === "public" ? { ...c, vouched: vouchedIps.has(c.ip) } : c
      )
      : intro.candidates;
    const { strategy, checks, publics } = planPunch(
      intro.ownNat,
      intro.peerNat,
      candidates,
      intro.ownMapped,
    );
    const ownHard = intro.ownNat === "endpoint-dependent";
    const peerHard = intro.peerNat === "endpoint-dependent";
    const probing = new PunchRound(this.#roundHost, sessionId, n, via, strategy);
    this.#current = probing;
    if (n > 0) this.#h.rerolled();
    this.#h.trace({
      type: "punch",
      session: sessionId,
      role: intro.role,
      candidates: checks.length,
      strategy,
      round: n,
    });
    if (checks.length === 0) return this.failed(probing, "no_candidates");
    // While a reroll remains, a round gives up early: a fresh pair of
    // sockets is a better bet than more of the same.
    if (this.#canReroll(probing)) {
      const limit = ownHard !== peerHard ? LINK_TIMING.rerollBirthdayMs : LINK_TIMING.rerollIceMs;
      probing.limitMs = limit;
      probing.schedule(() => this.failed(probing), limit);
    }
    probing.run({ checks, publics, role: intro.role, peerNat: intro.peerNat });
    // However slowly the worker's pace lets its loops run, the round ends
    // when its longest strategy would have.
    probing.schedule(() => this.#maybeGiveUp(probing), longestMs(ownHard !== peerHard));
  }

  /** Gives up when every strategy of this attempt has run out. */
  #maybeGiveUp(probing: PunchRound): void {
    if (probing.done) return;
    const directVia = this.#h.directVia();
    if (directVia !== undefined) {
      // A round that ran out beside a direct path it did not replace (a new
      // introduction while direct): its sockets go, the path's stays.
      if (this.#current === probing) this.stop(directVia);
      return;
    }
    const intro = this.#h.introduction();
    const birthday = (intro?.ownNat === "endpoint-dependent") !==
      (intro?.peerNat === "endpoint-dependent");
    // Give up once the longest strategy of this attempt has run (plus a
    // second for late answers), counted from the start.
    const wait = probing.startedAt + longestMs(birthday) + 1000 - this.#h.clock.now();
    probing.schedule(() => this.failed(probing), Math.max(0, wait));
  }

  /**
   * `probing` found no path (`cause`): it ends, then a reroll follows while
   * one remains, else a new introduction later. A timeout while the peer's
   * checks still reach the round's sockets waits once for answers in flight.
   */
  failed(probing: PunchRound, cause: FailCause = "timeout"): void {
    if (probing.done || this.#current !== probing || this.#h.directVia() !== undefined) return;
    if (cause === "timeout") {
      const now = this.#h.clock.now();
      // Every strategy's end schedules this: while the round is graced, only the grace's end counts.
      if (probing.gracedUntil !== undefined && now < probing.gracedUntil) return;
      const ours = (via: number) => via === probing.via || probing.extra.includes(via);
      if (
        probing.gracedUntil === undefined &&
        this.#h.heardSince(now - LINK_TIMING.answerGraceMs, ours)
      ) {
        probing.gracedUntil = now + LINK_TIMING.answerGraceMs;
        probing.schedule(() => this.failed(probing), LINK_TIMING.answerGraceMs);
        return;
      }
    }
    this.#end(probing, cause);
    // Only with a peer that is live (it said `opened` in this introduction):
    // one that never did runs no punching to reroll with, and a fresh socket
    // held for it would be one more for a member that only asks for introductions.
    const live = this.#peerOpened?.session === probing.session;
    if (live && this.#canReroll(probing)) {
      void this.#rerolls.start(probing.session, probing.round + 1);
    } else {
      this.#h.scheduleUpgrade();
    }
  }

  /** Ends a round that found no path, and says why. */
  #end(probing: PunchRound, cause: FailCause): void {
    const { probes, round, strategy, limitMs } = probing;
    const ranItsCourse = cause === "timeout" || (cause === "peer_rerolled" &&
      limitMs !== undefined && this.#h.clock.now() - probing.startedAt >= 0.9 * limitMs);
    const suspect = ranItsCourse && round === 0 && probing.via === 0 &&
      (strategy === "ice" || strategy === "easy-side");
    this.#h.trace({ type: "punch_failed", probes, round, strategy, cause, suspect });
    probing.failed = true;
    this.stop();
  }

  /** See {@linkcode PeerLink.suspectMapping}. */
  suspectMapping(): void {
    const probing = this.#current;
    if (!probing || probing.done || probing.round !== 0) return;
    if (this.#h.directVia() !== undefined || !this.#canReroll(probing)) return;
    this.failed(probing, "mapping_suspect");
  }

  /** The peer's opening packets of a TTL are out: our round's next stage may go. */
  peerOpened(frame: Extract<Frame, { type: "opened" }>): void {
    const before = this.#peerOpened;
    if (
      before?.session === frame.sessionId &&
      (before.round > frame.round || (before.round === frame.round && before.ttl > frame.ttl))
    ) return; // reordered or replayed
    this.#peerOpened = {
      session: frame.sessionId,
      round: frame.round,
      ttl: frame.ttl,
      last: frame.last,
    };
    const probing = this.#current;
    if (probing?.session === frame.sessionId && probing.round === frame.round) probing.advance();
  }

  /** The peer's round failed and it punches again from a fresh socket. */
  peerRerolled(frame: Extract<Frame, { type: "reroll" }>): void {
    if (frame.sessionId !== this.#h.introduction()?.id || !this.#h.openRerollSocket) return;
    // A direct path we still hear from stays; the peer falls back to the next introduction.
    const direct = this.#h.directVia() !== undefined;
    if (this.#rerolls.peerRerolled(frame, direct) !== "follow") return;
    // The peer's round ran out before ours (the rounds begin a relay hop
    // apart): ours goes too, and we reroll with it.
    const probing = this.#current;
    if (probing && !probing.done && probing.round < frame.round) {
      this.#end(probing, "peer_rerolled");
    }
    void this.#rerolls.start(frame.sessionId, frame.round);
  }

  /** Whether a failed `probing` round may be followed by a reroll. */
  #canReroll(probing: PunchRound): boolean {
    return this.#h.openRerollSocket !== undefined && probing.round < LINK_TIMING.rerolls &&
      probing.strategy !== "relay-only" && probing.strategy !== "both-hard";
  }

  /**
   * Sends a check of `probing`; an opening one with a low TTL (it is still a
   * probe: where it does reach the peer, on a LAN, the peer answers it).
   */
  probe(
    probing: PunchRound,
    to: UdpAddress,
    via: number,
    counted = true,
    openingTtl = 0,
  ): Promise<unknown> | false {
    const intro = this.#h.introduction();
    if (!intro) return Promise.resolve();
    if (!this.#h.pace()) return false;
    const nonce = newNonce();
    probing.sent.set(nonce, { to, via });
    if (counted) probing.probes++;
    const frame: Frame = { type: "probe", sessionId: intro.id, nonce, time: this.#h.clock.now() };
    return this.#h.sendUdp(frame, to, via, openingTtl);
  }

  /**
   * A triggered check to `to` from `via` (RFC 8445 §7.3.1.4), retransmitted
   * as ICE's checks are (§14.3: after 100, 200, 400 and 800 ms) while the
   * round lasts and `unanswered()` holds: one lost answer would leave the
   * peer on this path and us on the relay until the round fails and closes
   * the socket under the peer's path (seen in the lab). One series per
   * path at a time (at most {@linkcode MAX_TRIGGERED} at once, then sent
   * once); a probe that comes again meanwhile is only answered.
   */
  triggeredCheck(
    probing: PunchRound,
    to: UdpAddress,
    via: number,
    unanswered: () => boolean,
  ): void {
    const key = `${via}/${to.ip}/${to.port}`;
    if (probing.triggered.has(key)) return;
    const series = probing.triggered.size < MAX_TRIGGERED;
    if (series) probing.triggered.add(key);
    let wait = LINK_TIMING.probeIntervalMs * 2;
    const send = () => {
      if (probing.done || this.#current !== probing || !unanswered()) {
        probing.triggered.delete(key);
        return;
      }
      void this.probe(probing, to, via, false);
      if (!series || wait > LINK_TIMING.probeIntervalMs * 16) {
        probing.triggered.delete(key);
        return;
      }
      probing.schedule(send, wait);
      wait *= 2;
    };
    send();
  }

  /** Stops the round in progress and closes its sockets but `keepVia`. */
  stop(keepVia?: number): void {
    const probing = this.#current;
    if (!probing) return;
    probing.done = true;
    probing.clearTimers();
    this.#h.closeSockets(probing.extra.filter((v) => v !== keepVia));
    probing.extra = probing.extra.filter((v) => v === keepVia);
  }

  /** Stops the round and any reroll. */
  close(): void {
    this.stop();
    this.#rerolls.cancel();
  }
}
