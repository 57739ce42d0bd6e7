/**
 * One worker's link to one peer: punching a direct UDP path, keeping it,
 * falling back to the relay, and carrying an ordered, lossless message
 * stream over whichever path is current.
 *
 * All I/O is injected ({@linkcode PeerLinkDeps}): the link decides what to
 * send and when, on an injected clock, so tests run it against a simulated
 * network with no sockets, and the NAT lab runs it against real NATs.
 *
 * The link coordinates its rooms: the strategy of a round (`strategy.ts`:
 * ICE-style checks, the hard side's 256 sockets, the easy side's birthday
 * spray), the round itself with its low-TTL opening stages
 * (`punch_round.ts`), rerolls from fresh sockets (`reroll.ts`), the path in
 * use with its upkeep, roaming and the hard side's nomination
 * (`path_state.ts`), and the message stream (`message_stream.ts`). Every
 * strategy is bounded in packets and time (`timing.ts`); docs/punching.md
 * tells the whole story with the lab's figures.
 *
 * @module
 */

import type { TimerId } from "../core/clock.ts";
import { planPunch } from "./strategy.ts";
import { MessageStream, STREAM_LIMITS } from "./message_stream.ts";
import {
  type Frame,
  FrameError,
  importSessionKey,
  MAX_FRAME_PAYLOAD,
  newNonce,
  openFrame,
  sealFrame,
} from "./frame.ts";
import type {
  Candidate,
  NatMapping,
  PathKind,
  PunchMessage,
  UdpAddress,
} from "../protocol/messages.ts";

export { LINK_TIMING, openingLadder } from "./timing.ts";
import { LINK_TIMING } from "./timing.ts";
import { PunchRound, type RoundHost } from "./punch_round.ts";
import { Rerolls } from "./reroll.ts";
import { PathState, show } from "./path_state.ts";
import type { FailCause, LinkEvent } from "./link_events.ts";

export type { LinkEvent } from "./link_events.ts";
import type { LinkStats, PeerLinkDeps } from "./link_types.ts";
export type { LinkStats, PeerLinkDeps } from "./link_types.ts";

/**
 * An introduction from the rendezvous (its `punch`): the pair's session id
 * and key, our role, the peer's candidates and both NATs.
 */
interface Introduction {
  id: string;
  key: CryptoKey;
  role: PunchMessage["role"];
  candidates: Candidate[];
  peerNat: NatMapping | null;
  ownNat: NatMapping | null;
}

/** What a round punches from and to. */
interface Round {
  /** 0: the introduction's; then one per reroll. */
  n: number;
  /** Our socket for its checks (0: the main one). */
  via: number;
  /** The peer's candidates for it. */
  candidates: Candidate[];
}

/** A reroll of ours: its fresh socket once open, and whether its round began. */

/**
 * A link to one peer.
 *
 * @example
 * ```ts
 * const link = new PeerLink("peer-7", deps);
 * await link.punch(punchMessage);      // from the rendezvous
 * link.send(new TextEncoder().encode("hello"));
 * await link.receive(bytes, from, 0);  // every frame for this link
 * ```
 */
export class PeerLink {
  readonly peerId: string;
  readonly stats: LinkStats = {
    sent: { direct: 0, relay: 0 },
    received: { direct: 0, relay: 0 },
    retransmits: 0,
    punchAt: null,
    firstRelayAt: null,
    directAt: null,
    punchAttempts: 0,
    rerolls: 0,
  };
  #d: PeerLinkDeps;
  #random: () => number;
  #session?: Introduction;
  #previous?: Introduction;
  #probing?: PunchRound;
  #roundHost: RoundHost;
  #closed = false;
  /** Extra sockets this link opened and has not closed. */
  #extras = new Set<number>();
  /**
   * Sockets a round checks from: the main one (0) and rerolls' fresh ones.
   * A direct path on any other (the hard side's extras) is nominated.
   */
  #primaries = new Set<number>([0]);
  /** Our reroll in progress. */
  #rerolls: Rerolls;
  #upgradeTimer?: TimerId;
  #state: PathState;
  // The stream.
  #stream: MessageStream;
  #queued: Uint8Array[] = [];
  // While a session key is being imported: frames that arrive meanwhile
  // wait for it instead of being dropped as unauthenticated.
  #introducing?: Promise<void>;
  /** The peer's latest `opened` (it may come before our own probing starts). */
  #peerOpened?: { session: string; round: number; ttl: number; last: boolean };

  constructor(peerId: string, deps: PeerLinkDeps) {
    this.peerId = peerId;
    this.#d = deps;
    this.#random = deps.random ?? Math.random;
    this.#roundHost = {
      clock: deps.clock,
      random: () => this.#random(),
      timer: (fn, ms) => this.#timer(fn, ms),
      opening: deps.sendOpening !== undefined,
      openingTtl: deps.openingTtl ?? 3,
      probe: (round, to, via, counted, ttl) => this.#probe(round, to, via, counted, ttl),
      sendRelay: (frame) => this.#sendRelayFrame(frame),
      openSockets: (count) => {
        const vias = deps.openSockets(count);
        for (const v of vias) this.#extras.add(v);
        return vias;
      },
      maybeGiveUp: (round) => this.#maybeGiveUp(round),
      sessionId: () => this.#session?.id,
      peerOpened: () => this.#peerOpened,
      trace: (event) => this.#trace(event),
    };
    this.#rerolls = new Rerolls({
      clock: deps.clock,
      timer: (fn, ms) => this.#timer(fn, ms),
      openSocket: () => deps.openRerollSocket!(),
      wanted: (session) =>
        !this.#closed && this.#session?.id === session && this.#state.kind !== "direct",
      adopt: (via) => {
        this.#extras.add(via);
        this.#primaries.add(via);
      },
      closeSockets: (vias) => this.#closeSockets(vias),
      sendRelay: (frame) => this.#sendRelayFrame(frame),
      trace: (event) => this.#trace(event),
      giveUp: () => this.#scheduleUpgrade(),
      startRound: (session, n, via, candidates) =>
        this.#startProbing(session, { n, via, candidates }),
    });
    this.#state = new PathState({
      clock: deps.clock,
      timer: (fn, ms) => this.#timer(fn, ms),
      isOpen: (via) => this.#isOpen(via),
      isPrimary: (via) => this.#primaries.has(via),
      sendCheck: (type, nonce, to, via) => {
        const session = this.#session;
        if (!session) return false;
        this.#sendUdp({ type, sessionId: session.id, nonce, time: deps.clock.now() }, to, via);
        return true;
      },
      probing: () => this.#probing,
      stopProbing: (keepVia) => this.#stopProbing(keepVia),
      closeSockets: (vias) => this.#closeSockets(vias),
      moved: () => this.#retransmitAll(),
      scheduleUpgrade: () => this.#scheduleUpgrade(),
      clearUpgrade: () => this.#clearUpgrade(),
      onPath: (path, rttMs) => deps.onPath(path, rttMs),
      onPaths: () => deps.onPaths?.(),
      trace: (event) => this.#trace(event),
      wentDirect: () => {
        this.stats.directAt ??= deps.clock.now();
      },
    });
    this.#stream = new MessageStream({
      clock: deps.clock,
      transmit: (seq, payload) => this.#transmit(seq, payload),
      rto: () => this.#rto(),
      deliver: (payload, path) => this.#d.onMessage(payload, path),
      stats: this.stats,
    });
  }

  /** The current path. */
  get path(): PathKind {
    return this.#state.kind;
  }

  /** RTT of the direct path, if any. */
  get rttMs(): number | null {
    return this.#state.rttMs;
  }

  /** Session ids this link accepts frames for (current, then previous). */
  get sessionIds(): string[] {
    return [this.#session?.id, this.#previous?.id].filter((s): s is string => s !== undefined);
  }

  /** The direct path's peer address and our socket (`via`), if there is one. */
  get direct(): { to: UdpAddress; via: number } | null {
    return this.#state.direct;
  }

  /**
   * Every validated path (`via|ip|port`): transport packets from any of
   * them are the peer's, though the link sends on {@linkcode PeerLink.direct} only.
   */
  get validatedPaths(): string[] {
    return this.#state.validated;
  }

  /** Where the direct path goes, if there is one. */
  get directTo(): string | null {
    const direct = this.#state.direct;
    return direct ? show(direct.to) : null;
  }

  #trace(event: LinkEvent): void {
    this.#d.trace?.(event);
  }

  #timer(fn: () => void, ms: number): TimerId {
    return this.#d.clock.setTimeout(() => {
      if (!this.#closed) fn();
    }, ms);
  }

  // ---- punching -------------------------------------------------------------

  /** Starts (or restarts) punching with the rendezvous's introduction. */
  async punch(message: PunchMessage): Promise<void> {
    if (this.#closed) return;
    const importing = importSessionKey(message.key);
    const introducing = Promise.all([this.#introducing, importing]).then(() => {}, () => {});
    this.#introducing = introducing;
    introducing.then(() => {
      if (this.#introducing === introducing) this.#introducing = undefined;
    });
    let key: CryptoKey;
    try {
      key = await importing;
    } catch (error) {
      this.#trace({ type: "bad_introduction", reason: String(error) });
      return;
    }
    if (this.#closed) return;
    if (this.#session?.id !== message.session_id) {
      this.#previous = this.#session;
      this.#state.newSession();
    }
    this.#session = {
      id: message.session_id,
      key,
      role: message.role,
      candidates: message.candidates,
      peerNat: message.peer_nat,
      ownNat: message.own_nat,
    };
    this.stats.punchAt ??= this.#d.clock.now();
    if (this.#state.kind !== "direct") this.stats.punchAttempts++;
    // From the moment of introduction the relay carries data.
    const queued = this.#queued.splice(0);
    for (const payload of queued) this.send(payload);
    this.#retransmitAll();
    // A direct path may go on over the socket it uses while the new attempt runs.
    this.#stopProbing(this.#state.direct?.via);
    this.#rerolls.cancel();
    this.#timer(() => this.#startProbing(message.session_id), message.delay_ms);
  }

  #startProbing(sessionId: string, round?: Round): void {
    const session = this.#session;
    if (!session || session.id !== sessionId) return;
    const { n, via, candidates } = round ?? { n: 0, via: 0, candidates: session.candidates };
    const { strategy, checks, publics } = planPunch(session.ownNat, session.peerNat, candidates);
    const ownHard = session.ownNat === "endpoint-dependent";
    const peerHard = session.peerNat === "endpoint-dependent";
    const probing = new PunchRound(this.#roundHost, sessionId, n, via, strategy);
    this.#probing = probing;
    if (n > 0) this.stats.rerolls++;
    this.#trace({
      type: "punch",
      session: sessionId,
      role: session.role,
      candidates: checks.length,
      strategy,
      round: n,
    });
    if (checks.length === 0) return this.#punchFailed(probing, "no_candidates");
    // While a reroll remains, a round gives up early: a fresh pair of
    // sockets is a better bet than more of the same.
    if (this.#canReroll(probing)) {
      const limit = ownHard !== peerHard ? LINK_TIMING.rerollBirthdayMs : LINK_TIMING.rerollIceMs;
      probing.limitMs = limit;
      probing.timers.push(this.#timer(() => this.#punchFailed(probing), limit));
    }

    probing.run({ checks, publics, role: session.role, peerNat: session.peerNat });
  }

  /** Gives up when every strategy of this attempt has run out. */
  #maybeGiveUp(probing: PunchRound): void {
    if (probing.done) return;
    if (this.#state.kind === "direct") {
      // A round that ran out beside a direct path it did not replace (a new
      // introduction while direct): its sockets go, the path's stays.
      if (this.#probing === probing) this.#stopProbing(this.#state.direct?.via);
      return;
    }
    const session = this.#session;
    const ownHard = session?.ownNat === "endpoint-dependent";
    const peerHard = session?.peerNat === "endpoint-dependent";
    // Give up once the longest strategy of this attempt has run (plus a
    // second for late answers), counted from the start.
    const longest = Math.max(
      LINK_TIMING.maxProbes * LINK_TIMING.probeIntervalMs,
      ownHard !== peerHard ? LINK_TIMING.hardRounds * LINK_TIMING.hardRoundMs : 0,
      ownHard !== peerHard ? LINK_TIMING.sprayMax * LINK_TIMING.sprayIntervalMs : 0,
    );
    const wait = probing.startedAt + longest + 1000 - this.#d.clock.now();
    probing.timers.push(this.#timer(() => this.#punchFailed(probing), Math.max(0, wait)));
  }

  #punchFailed(probing: PunchRound, cause: FailCause = "timeout"): void {
    if (probing.done || this.#probing !== probing || this.#state.kind === "direct") return;
    if (cause === "timeout") {
      const now = this.#d.clock.now();
      // Every strategy's end schedules this: while the round is graced, only the grace's end counts.
      if (probing.gracedUntil !== undefined && now < probing.gracedUntil) return;
      const ours = (via: number) => via === probing.via || probing.extra.includes(via);
      if (
        probing.gracedUntil === undefined &&
        this.#state.heardSince(now - LINK_TIMING.answerGraceMs, ours)
      ) {
        probing.gracedUntil = now + LINK_TIMING.answerGraceMs;
        probing.timers.push(
          this.#timer(() => this.#punchFailed(probing), LINK_TIMING.answerGraceMs),
        );
        return;
      }
    }
    this.#endRound(probing, cause);
    if (this.#canReroll(probing)) void this.#rerolls.start(probing.session, probing.round + 1);
    else this.#scheduleUpgrade();
  }

  /** Ends a round that found no path, and says why. */
  #endRound(probing: PunchRound, cause: FailCause): void {
    const { probes, round, strategy, limitMs } = probing;
    const ranItsCourse = cause === "timeout" || (cause === "peer_rerolled" &&
      limitMs !== undefined && this.#d.clock.now() - probing.startedAt >= 0.9 * limitMs);
    const suspect = ranItsCourse && round === 0 && probing.via === 0 &&
      (strategy === "ice" || strategy === "easy-side");
    this.#trace({ type: "punch_failed", probes, round, strategy, cause, suspect });
    probing.failed = true;
    this.#stopProbing();
  }

  /**
   * Another link's first round from the main socket failed: a clash in our
   * NAT may have moved that socket's mapping for every flow opened since
   * (Linux reuses the newest mapping of a source port), so a first round of
   * ours still under way from that socket, without a direct path yet, is
   * rerolled now rather than run out. Nothing happens otherwise.
   */
  suspectMapping(): void {
    const probing = this.#probing;
    if (!probing || probing.done || probing.round !== 0 || this.#state.kind === "direct") return;
    if (!this.#canReroll(probing)) return;
    this.#punchFailed(probing, "mapping_suspect");
  }

  /** Whether a failed `probing` round may be followed by a reroll. */
  #canReroll(probing: PunchRound): boolean {
    return this.#d.openRerollSocket !== undefined && probing.round < LINK_TIMING.rerolls &&
      probing.strategy !== "relay-only" && probing.strategy !== "both-hard";
  }

  /**
   * Sends a probe; an `opening` one with a low TTL (it is still a probe:
   * where it does reach the peer, on a LAN, the peer answers it).
   */
  #probe(
    probing: PunchRound,
    to: UdpAddress,
    via: number,
    counted = true,
    openingTtl = 0,
  ): Promise<unknown> {
    const session = this.#session;
    if (!session) return Promise.resolve();
    const nonce = newNonce();
    probing.sent.set(nonce, { to, via });
    if (counted) probing.probes++;
    return this.#sendUdp(
      { type: "probe", sessionId: session.id, nonce, time: this.#d.clock.now() },
      to,
      via,
      openingTtl,
    );
  }

  #stopProbing(keepVia?: number): void {
    const probing = this.#probing;
    if (!probing) return;
    probing.done = true;
    for (const t of probing.timers) this.#d.clock.clearTimeout(t);
    this.#closeSockets(probing.extra.filter((v) => v !== keepVia));
    probing.extra = probing.extra.filter((v) => v === keepVia);
  }

  #closeSockets(vias: number[]): void {
    this.#state.dropSockets(vias.filter((v) => v !== 0));
    for (const v of vias) if (v !== 0) this.#primaries.delete(v);
    const open = vias.filter((v) => this.#extras.delete(v));
    if (open.length) this.#d.closeSockets(open);
  }

  /** True for the main socket and extra sockets not closed yet. */
  #isOpen(via: number): boolean {
    return via === 0 || this.#extras.has(via);
  }

  #scheduleUpgrade(): void {
    if (this.#upgradeTimer !== undefined) return;
    this.#upgradeTimer = this.#timer(() => {
      this.#upgradeTimer = undefined;
      if (this.#state.kind !== "direct") this.#d.requestConnect();
    }, LINK_TIMING.upgradeRetryMs);
  }

  #clearUpgrade(): void {
    if (this.#upgradeTimer !== undefined) this.#d.clock.clearTimeout(this.#upgradeTimer);
    this.#upgradeTimer = undefined;
  }

  // ---- receiving ------------------------------------------------------------

  /**
   * Handles one frame for this link: from UDP (`from`, socket `via`) or from
   * the relay (`from` undefined). Frames that fail authentication are dropped.
   */
  async receive(bytes: Uint8Array, from: UdpAddress | undefined, via = 0): Promise<void> {
    if (this.#introducing) await this.#introducing;
    if (this.#closed) return;
    let frame: Frame | undefined;
    for (const session of [this.#session, this.#previous]) {
      if (!session) continue;
      try {
        frame = await openFrame(bytes, session.key);
        if (frame.sessionId !== session.id) frame = undefined;
        else break;
      } catch (error) {
        if (!(error instanceof FrameError)) throw error;
      }
    }
    if (frame === undefined) return; // unauthenticated or stale: dropped
    const pathKind: PathKind = from ? "direct" : "relay";
    if (from && frame.type !== "opened" && frame.type !== "reroll") this.#state.validate(from, via);
    switch (frame.type) {
      case "opened": {
        // The peer's opening packets of this TTL are out: our next stage may go.
        if (from) return;
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
        const probing = this.#probing;
        if (probing?.session === frame.sessionId && probing.round === frame.round) {
          probing.advance();
        }
        return;
      }
      case "reroll": {
        // The peer's round failed and it punches again from a fresh socket.
        if (from || frame.sessionId !== this.#session?.id || !this.#d.openRerollSocket) return;
        // A direct path we still hear from stays; the peer falls back to the next introduction.
        if (this.#rerolls.peerRerolled(frame, this.#state.kind === "direct") !== "follow") return;
        // The peer's round ran out before ours (the rounds begin a relay
        // hop apart): ours goes too, and we reroll with it.
        const probing = this.#probing;
        if (probing && !probing.done && probing.round < frame.round) {
          this.#endRound(probing, "peer_rerolled");
        }
        void this.#rerolls.start(frame.sessionId, frame.round);
        return;
      }
      case "nominate":
        if (!from) return;
        this.#sendUdp({ ...frame, type: "ack" }, from, via);
        this.#state.follow(from, via);
        return;
      case "probe":
        if (!from) return;
        this.#sendUdp({ ...frame, type: "ack" }, from, via);
        // Triggered check (RFC 8445 §7.3.1.4): a probe that got through means
        // our probe back can too, now, whatever we sent there before (a
        // mapping the peer's NAT opened after our earlier probe was dropped).
        if (this.#probing && !this.#probing.done && !this.#state.isPathTo(from, via)) {
          this.#probe(this.#probing, from, via, false);
        }
        // After a nomination only data and nominations move the path: a
        // probe may be a late one from a socket the peer has closed since.
        if (!this.#state.following) this.#state.roam(from, via);
        return;
      case "ack": {
        if (!from) return;
        const rtt = this.#d.clock.now() - frame.time;
        if (this.#state.keepaliveAnswered(frame.nonce, rtt)) return;
        const probing = this.#probing;
        const sent = probing?.sent.get(frame.nonce);
        if (!sent) return; // not our nonce: replayed or stale
        // A round we gave up is over for the peer too (it rerolls or waits for
        // the next introduction, closing that round's sockets): a late answer
        // would select a path that is about to die (seen in the lab under load).
        if (probing!.failed) return;
        this.#state.measured(from, via, rtt);
        this.#state.select(from, via, rtt);
        return;
      }
      case "data": {
        this.stats.received[pathKind]++;
        if (from) this.#state.roam(from, via);
        this.#stream.accept(frame.seq, frame.payload, pathKind);
        const ack: Frame = {
          type: "data_ack",
          sessionId: frame.sessionId,
          seq: this.#stream.expected,
        };
        if (from) this.#sendUdp(ack, from, via);
        else this.#sendRelayFrame(ack);
        return;
      }
      case "data_ack":
        this.#stream.acked(frame.seq);
        return;
    }
  }

  // ---- sending --------------------------------------------------------------

  /**
   * Queues `payload` (at most {@linkcode MAX_FRAME_PAYLOAD} bytes) for the
   * peer. Delivery is ordered and survives path changes and loss; before the
   * first introduction it waits (and asks for one).
   *
   * @throws {RangeError} when the payload is too large or the window is full.
   */
  send(payload: Uint8Array): void {
    if (payload.length > MAX_FRAME_PAYLOAD) {
      throw new RangeError(`Cannot send ${payload.length} bytes: at most ${MAX_FRAME_PAYLOAD}`);
    }
    if (!this.#session) {
      if (this.#queued.length >= STREAM_LIMITS.window) {
        throw new RangeError("Cannot send: queue is full");
      }
      this.#queued.push(payload);
      if (this.#queued.length === 1) this.#d.requestConnect();
      return;
    }
    this.#stream.send(payload);
  }

  #transmit(seq: number, payload: Uint8Array): void {
    const session = this.#session!;
    const frame: Frame = { type: "data", sessionId: session.id, seq, payload };
    const direct = this.#state.direct;
    if (direct) {
      this.stats.sent.direct++;
      this.#sendUdp(frame, direct.to, direct.via);
    } else {
      this.stats.sent.relay++;
      if (this.stats.firstRelayAt === null) {
        this.stats.firstRelayAt = this.#d.clock.now();
        this.#trace({ type: "first_relay" });
      }
      this.#sendRelayFrame(frame);
    }
  }

  #retransmitAll(): void {
    if (this.#session) this.#stream.retransmitAll();
  }

  /** The retransmission timeout: on the direct path 2×RTT (at least the minimum), else the relay's. */
  #rto(): number {
    return this.#state.kind === "direct"
      ? Math.max(LINK_TIMING.rtoMinMs, 2 * (this.#state.rttMs ?? 0)) // unmeasured: the minimum
      : LINK_TIMING.relayRtoMs;
  }

  /** Seals and sends a frame; resolves once it is handed on (an opening one: sent). */
  #sendUdp(frame: Frame, to: UdpAddress, via: number, openingTtl = 0): Promise<unknown> {
    const key = this.#session?.key;
    if (!key || !this.#isOpen(via)) return Promise.resolve();
    return sealFrame(frame, key).then((bytes) => {
      if (openingTtl > 0 && this.#d.sendOpening) {
        return this.#d.sendOpening(bytes, to, via, openingTtl);
      }
      this.#d.sendUdp(bytes, to, via);
    }, () => {});
  }

  #sendRelayFrame(frame: Frame): void {
    const key = this.#session?.key;
    if (!key) return;
    sealFrame(frame, key).then((bytes) => this.#d.sendRelay(bytes), () => {});
  }

  /** A summary for the health endpoint. */
  snapshot(): Record<string, unknown> {
    return {
      path: this.#state.kind,
      direct_to: this.directTo,
      rtt_ms: this.rttMs === null ? null : Math.round(this.rttMs * 10) / 10,
      in_flight: this.#stream.inFlight,
      validated_paths: this.#state.validatedCount,
      ...this.stats,
    };
  }

  /** Stops every timer and closes extra sockets. */
  close(): void {
    this.#stopProbing();
    this.#rerolls.cancel();
    this.#closeSockets([...this.#extras]);
    this.#closed = true;
    this.#stream.close();
    this.#state.close();
    if (this.#upgradeTimer !== undefined) this.#d.clock.clearTimeout(this.#upgradeTimer);
  }
}
