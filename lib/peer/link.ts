/**
 * One worker's link to one peer: punching a direct UDP path, keeping it,
 * falling back to the relay, and carrying an ordered, lossless message
 * stream over whichever path is current.
 *
 * All I/O is injected ({@linkcode PeerLinkDeps}): the link decides what to
 * send and when, on an injected clock, so tests run it against a simulated
 * network with no sockets, and the NAT lab runs it against real NATs.
 *
 * Strategies (after the rendezvous's `punch`, at the agreed start time):
 * - ICE-style checks: a probe every 50 ms, round robin over the peer's
 *   candidates (local first, then public), at most 200; every probe is
 *   answered by an ack; a probe from an address we have not checked yet is
 *   answered with a triggered probe (peer-reflexive, RFC 8445 §7.3.1.4).
 * - Hard side (our mapping endpoint-dependent, the peer's not): 256 extra
 *   sockets each probe the peer's public endpoint once a second for 15 s,
 *   opening 256 mappings in our NAT...
 * - ...while the easy side (the peer hard, we not) sprays probes at random
 *   ports of the peer's public IP, one every 2 ms for 10 s: 5,000 tries at
 *   256 open mappings in ~64,500 ports succeed with probability
 *   1 - (1 - 256/64512)^5000 ≈ 99.9999998 % (the birthday attack Tailscale and
 *   hyperdht use).
 * - Both hard: local candidates only; the relay carries the data.
 * - A round that fails is rerolled (hyperdht's word): each side opens a
 *   fresh socket, learns its mapping with STUN, and sends its candidates
 *   through the relay (`reroll`); a new round runs between the two fresh
 *   sockets, up to {@linkcode LINK_TIMING}`.rerolls` times. A socket whose
 *   mapping a clash has moved (a Linux NAT that took a peer's early packet
 *   for itself remaps the socket's later flows too) punches from one it has
 *   not used yet.
 * The first probe/ack round trip selects a path; checks go on for 300 ms in
 * case a faster one answers, then stop. Every strategy is bounded in packets
 * and time (see {@linkcode LINK_TIMING}).
 *
 * Nomination: the two sides may select different pairs, which matters only
 * when one side is hard. Its NAT opened a mapping per extra socket, and the
 * easy side's acks may have come through any of them, but the hard side
 * keeps one socket and closes the rest. So, like ICE's controlling agent
 * (RFC 8445 §8.1.1), the hard side nominates: once settled, and with every
 * keepalive, it sends `nominate` from the socket it kept, and the easy side
 * moves its path to wherever the nomination came from and stops choosing on
 * its own. Neither side ever moves its path onto a socket it has closed.
 *
 * @module
 */

import type { Clock, TimerId } from "../core/clock.ts";
import { clearlyFaster, pathKey, ValidatedPaths } from "./paths.ts";
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
import type { FailCause, LinkEvent } from "./link_events.ts";

export type { LinkEvent } from "./link_events.ts";

/** What the link needs from its surroundings. */
export interface PeerLinkDeps {
  clock: Clock;
  /** Sends a frame over UDP from socket `via` (0: the worker's main socket). */
  sendUdp(bytes: Uint8Array, to: UdpAddress, via: number): void;
  /**
   * Sends a frame from socket `via` with a low TTL: it makes our NAT's
   * mapping toward `to` and dies in transit before the peer's NAT, where a
   * full-TTL packet arriving before the peer's own would be taken by the
   * NAT router itself and clash with the peer's mapping (Linux conntrack
   * without input filtering). Without it, no opening packets are sent.
   */
  sendOpening?(
    bytes: Uint8Array,
    to: UdpAddress,
    via: number,
    ttl: number,
  ): Promise<unknown> | void;
  /** The highest TTL of opening packets (they go out at 2, 3, … up to it). @default {3} */
  openingTtl?: number;
  /** Sends a frame through the rendezvous relay. */
  sendRelay(bytes: Uint8Array): void;
  /**
   * Opens one fresh socket for a reroll and learns its candidates (its STUN
   * mapping and local addresses, one address family); null when it cannot.
   * Without it, failed rounds are not rerolled.
   */
  openRerollSocket?(): Promise<{ via: number; candidates: Candidate[] } | null>;
  /** Opens up to `count` extra sockets; returns their `via` numbers. */
  openSockets(count: number): number[];
  closeSockets(vias: number[]): void;
  /** Asks the rendezvous for a (new) introduction. */
  requestConnect(): void;
  /** A message from the peer, in order. */
  onMessage(payload: Uint8Array, path: PathKind): void;
  /** The path changed. */
  onPath(path: PathKind, rttMs: number | null): void;
  /** The validated paths ({@linkcode PeerLink.validatedPaths}) changed. */
  onPaths?(): void;
  /** Events in order, for logs and tests. */
  trace?(event: LinkEvent): void;
  /** @default {Math.random} */
  random?: () => number;
}

type Path =
  | { kind: "relay" }
  /** `rttMs` is null until measured (a path taken by nomination). */
  | { kind: "direct"; to: UdpAddress; via: number; rttMs: number | null };

interface Session {
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

const show = (a: UdpAddress) => (a.ip.includes(":") ? `[${a.ip}]:${a.port}` : `${a.ip}:${a.port}`);

/** Counters and timings, for the health endpoint and the lab. */
export interface LinkStats {
  sent: { direct: number; relay: number };
  received: { direct: number; relay: number };
  retransmits: number;
  /** Clock times: when the first punch arrived, the first relayed frame left, the path went direct. */
  punchAt: number | null;
  firstRelayAt: number | null;
  directAt: number | null;
  /** Punches that needed more than one attempt before going direct. */
  punchAttempts: number;
  /** Rounds rerolled (fresh sockets), over all introductions. */
  rerolls: number;
}

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
  #session?: Session;
  #previous?: Session;
  #path: Path = { kind: "relay" };
  /** Every path the peer's authenticated frames came by; the path above is one of them. */
  #paths = new ValidatedPaths();
  /** When the path in use last carried an authenticated frame of the peer's. */
  #pathHeardAt = 0;
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
  /** The peer (the hard side) nominated our path: its choice holds. */
  #following = false;
  /**
   * We are the hard side and keep one socket: every keepalive nominates
   * the path we kept, so the easy side sends there, not to a mapping of a
   * socket we closed (even when we kept the main one).
   */
  #nominating = false;
  // Path upkeep.
  #keepaliveTimer?: TimerId;
  #lostTimer?: TimerId;
  #keepaliveNonce?: string;
  #upgradeTimer?: TimerId;
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
        !this.#closed && this.#session?.id === session && this.#path.kind !== "direct",
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
    return this.#path.kind;
  }

  /** RTT of the direct path, if any. */
  get rttMs(): number | null {
    return this.#path.kind === "direct" ? this.#path.rttMs : null;
  }

  /** Session ids this link accepts frames for (current, then previous). */
  get sessionIds(): string[] {
    return [this.#session?.id, this.#previous?.id].filter((s): s is string => s !== undefined);
  }

  /** The direct path's peer address and our socket (`via`), if there is one. */
  get direct(): { to: UdpAddress; via: number } | null {
    const path = this.#path;
    return path.kind === "direct" ? { to: path.to, via: path.via } : null;
  }

  /**
   * Every validated path (`via|ip|port`): transport packets from any of
   * them are the peer's, though the link sends on {@linkcode PeerLink.direct} only.
   */
  get validatedPaths(): string[] {
    const keys = this.#paths.keys();
    const path = this.#path;
    if (path.kind === "direct" && !this.#paths.get(path.to, path.via)) {
      keys.push(pathKey(path.to, path.via));
    }
    return keys;
  }

  /** Where the direct path goes, if there is one. */
  get directTo(): string | null {
    return this.#path.kind === "direct" ? show(this.#path.to) : null;
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
      this.#following = false;
      this.#nominating = false;
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
    if (this.#path.kind !== "direct") this.stats.punchAttempts++;
    // From the moment of introduction the relay carries data.
    const queued = this.#queued.splice(0);
    for (const payload of queued) this.send(payload);
    this.#retransmitAll();
    // A direct path may go on over the socket it uses while the new attempt runs.
    this.#stopProbing(this.#path.kind === "direct" ? this.#path.via : undefined);
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
    if (this.#path.kind === "direct") {
      // A round that ran out beside a direct path it did not replace (a new
      // introduction while direct): its sockets go, the path's stays.
      if (this.#probing === probing) this.#stopProbing(this.#path.via);
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
    if (probing.done || this.#probing !== probing || this.#path.kind === "direct") return;
    if (cause === "timeout") {
      const now = this.#d.clock.now();
      // Every strategy's end schedules this: while the round is graced, only the grace's end counts.
      if (probing.gracedUntil !== undefined && now < probing.gracedUntil) return;
      const ours = (via: number) => via === probing.via || probing.extra.includes(via);
      if (
        probing.gracedUntil === undefined &&
        this.#paths.latest(now - LINK_TIMING.answerGraceMs, (p) => ours(p.via))
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
    if (!probing || probing.done || probing.round !== 0 || this.#path.kind === "direct") return;
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
    if (this.#paths.dropSockets(vias.filter((v) => v !== 0))) this.#d.onPaths?.();
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
      if (this.#path.kind !== "direct") this.#d.requestConnect();
    }, LINK_TIMING.upgradeRetryMs);
  }

  #select(to: UdpAddress, via: number, rttMs: number): void {
    if (!this.#isOpen(via)) return; // a late answer on a socket closed since
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
    const probing = this.#probing;
    this.#path = { kind: "direct", to, via, rttMs };
    this.#pathHeardAt = this.#d.clock.now();
    this.stats.directAt ??= this.#d.clock.now();
    this.#trace({
      type: "direct",
      to: show(to),
      via,
      rtt_ms: rttMs,
      probes: probing?.probes ?? 0,
      round: probing?.round ?? 0,
    });
    this.#d.onPath("direct", rttMs);
    if (probing && !probing.done) {
      probing.timers.push(this.#timer(() => {
        if (this.#path.kind !== "direct") return;
        // The easy side does not choose among the hard side's sockets: that
        // side keeps one and nominates it.
        if (probing.strategy !== "easy-side") this.#chooseFastest();
        this.#stopProbing(this.#path.via);
        // The hard side keeps one socket of many: nominate it at once.
        if (!this.#primaries.has(this.#path.via) || probing.strategy === "hard-side") {
          this.#nominating = true;
          this.#keepalive();
        }
      }, LINK_TIMING.settleMs));
    }
    this.#clearUpgrade();
    this.#retransmitAll();
    this.#armKeepalive();
  }

  /**
   * The round settled: move once to its fastest checked path, if that is
   * clearly faster than the one in use (20 % and 2 ms), as Tailscale's
   * `betterAddr` does; near-equal paths (two addresses of one host) never
   * move it.
   */
  #chooseFastest(): void {
    const path = this.#path;
    // The peer nominated the path it keeps: our own checks do not move it.
    // A path through an extra socket (the hard side's) stays: the peer aims
    // at that socket's mapping, and the others are about to close.
    if (path.kind !== "direct" || this.#following || !this.#primaries.has(path.via)) return;
    const current = this.#paths.get(path.to, path.via)?.bestRttMs ?? null;
    if (current === null) return;
    const best = this.#paths.fastest((p) => this.#isOpen(p.via));
    if (!best || !clearlyFaster(best.bestRttMs!, current)) return;
    this.#path = { kind: "direct", to: best.to, via: best.via, rttMs: best.bestRttMs };
    this.#pathHeardAt = best.heardAt;
    this.#trace({
      type: "direct",
      to: show(best.to),
      via: best.via,
      rtt_ms: best.bestRttMs,
      probes: this.#probing?.probes ?? 0,
      moved: "faster",
    });
    this.#retransmitAll();
  }

  #clearUpgrade(): void {
    if (this.#upgradeTimer !== undefined) this.#d.clock.clearTimeout(this.#upgradeTimer);
    this.#upgradeTimer = undefined;
  }

  // ---- path upkeep ----------------------------------------------------------

  #armKeepalive(): void {
    if (this.#keepaliveTimer !== undefined) this.#d.clock.clearTimeout(this.#keepaliveTimer);
    this.#keepaliveTimer = this.#timer(() => this.#keepalive(), LINK_TIMING.keepaliveMs);
  }

  /** Sends a keepalive now and re-arms the timer (also when called off it). */
  #keepalive(): void {
    const path = this.#path;
    const session = this.#session;
    if (path.kind !== "direct" || !session) return;
    const nonce = newNonce();
    this.#keepaliveNonce = nonce;
    // From the hard side (an extra socket, or the main one it kept), every keepalive nominates.
    const type = this.#nominating || !this.#primaries.has(path.via) ? "nominate" : "probe";
    this.#sendUdp(
      { type, sessionId: session.id, nonce, time: this.#d.clock.now() },
      path.to,
      path.via,
    );
    if (this.#lostTimer === undefined) {
      this.#lostTimer = this.#timer(() => this.#pathLost(), LINK_TIMING.lostAfterMs);
    }
    this.#armKeepalive();
  }

  #pathLost(): void {
    this.#lostTimer = undefined;
    const path = this.#path;
    if (path.kind !== "direct") return;
    this.#trace({ type: "path_lost", to: show(path.to) });
    if (this.#paths.drop(path.to, path.via)) this.#d.onPaths?.();
    // Another path the peer was heard on lately (its NAT rebound, say)
    // takes over before the relay does; a keepalive confirms it at once.
    const since = this.#d.clock.now() - LINK_TIMING.lostAfterMs;
    const alive = this.#paths.latest(since, (p) => p.via === 0 || p.via === path.via);
    if (alive && this.#isOpen(alive.via)) {
      this.#path = { kind: "direct", to: alive.to, via: alive.via, rttMs: path.rttMs };
      this.#pathHeardAt = alive.heardAt;
      this.#trace({
        type: "direct",
        to: show(alive.to),
        via: alive.via,
        rtt_ms: path.rttMs,
        probes: 0,
        moved: "roamed",
      });
      this.#retransmitAll();
      this.#keepalive();
      return;
    }
    if (this.#keepaliveTimer !== undefined) this.#d.clock.clearTimeout(this.#keepaliveTimer);
    this.#keepaliveTimer = undefined;
    this.#closeSockets([path.via, ...(this.#probing?.extra.splice(0) ?? [])]);
    this.#path = { kind: "relay" };
    this.#trace({ type: "relay" });
    this.#d.onPath("relay", null);
    this.#retransmitAll();
    this.#scheduleUpgrade();
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
    if (from && frame.type !== "opened" && frame.type !== "reroll") this.#validate(from, via);
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
        if (this.#rerolls.peerRerolled(frame, this.#path.kind === "direct") !== "follow") return;
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
        this.#follow(from, via);
        return;
      case "probe":
        if (!from) return;
        this.#sendUdp({ ...frame, type: "ack" }, from, via);
        // Triggered check (RFC 8445 §7.3.1.4): a probe that got through means
        // our probe back can too, now, whatever we sent there before (a
        // mapping the peer's NAT opened after our earlier probe was dropped).
        if (this.#probing && !this.#probing.done && !this.#isPathTo(from, via)) {
          this.#probe(this.#probing, from, via, false);
        }
        // After a nomination only data and nominations move the path: a
        // probe may be a late one from a socket the peer has closed since.
        if (!this.#following) this.#roam(from, via);
        return;
      case "ack": {
        if (!from) return;
        const rtt = this.#d.clock.now() - frame.time;
        if (frame.nonce === this.#keepaliveNonce) {
          this.#keepaliveNonce = undefined;
          this.#heard();
          const path = this.#path;
          if (path.kind === "direct") {
            path.rttMs = path.rttMs === null ? rtt : 0.8 * path.rttMs + 0.2 * rtt;
          }
          return;
        }
        const probing = this.#probing;
        const sent = probing?.sent.get(frame.nonce);
        if (!sent) return; // not our nonce: replayed or stale
        // A round we gave up is over for the peer too (it rerolls or waits for
        // the next introduction, closing that round's sockets): a late answer
        // would select a path that is about to die (seen in the lab under load).
        if (probing!.failed) return;
        if (this.#isOpen(via)) this.#paths.heard(from, via, this.#d.clock.now(), rtt);
        this.#select(from, via, rtt);
        return;
      }
      case "data": {
        this.stats.received[pathKind]++;
        if (from) this.#roam(from, via);
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

  /**
   * An authenticated probe or data frame came from `from`: if the direct
   * path points elsewhere, follow the peer there (its NAT rebound, or the
   * hard side answers from the socket it kept), as WireGuard's roaming does.
   */
  #roam(from: UdpAddress, via: number): void {
    const path = this.#path;
    if (path.kind !== "direct" || !this.#isOpen(via)) return;
    if (path.to.ip === from.ip && path.to.port === from.port && path.via === via) return;
    if (this.#probing && !this.#probing.done) return; // still choosing: acks decide
    // A path that answers stays: the peer may send by another of its paths.
    if (this.#d.clock.now() - this.#pathHeardAt < LINK_TIMING.roamQuietMs) return;
    this.#path = { kind: "direct", to: from, via, rttMs: path.rttMs };
    this.#pathHeardAt = this.#d.clock.now();
    this.#trace({
      type: "direct",
      to: show(from),
      via,
      rtt_ms: path.rttMs,
      probes: 0,
      moved: "roamed",
    });
  }

  /** An authenticated frame came by `from`/`via`: a validated path, and proof of the one in use. */
  #validate(from: UdpAddress, via: number): void {
    if (!this.#isOpen(via)) return;
    if (this.#paths.heard(from, via, this.#d.clock.now())) this.#d.onPaths?.();
    if (this.#isPathTo(from, via)) this.#heard();
  }

  /**
   * The peer nominated the path its frame came on (it is the hard side and
   * keeps only that socket): use it, and stop choosing on our own.
   */
  #follow(from: UdpAddress, via: number): void {
    if (!this.#isOpen(via)) return;
    this.#following = true;
    if (this.#probing && !this.#probing.done) this.#stopProbing(via);
    if (this.#isPathTo(from, via)) return this.#heard();
    const path = this.#path;
    this.#path = {
      kind: "direct",
      to: from,
      via,
      rttMs: path.kind === "direct" ? path.rttMs : null,
    };
    this.stats.directAt ??= this.#d.clock.now();
    this.#trace({
      type: "direct",
      to: show(from),
      via,
      rtt_ms: this.#path.rttMs,
      probes: this.#probing?.probes ?? 0,
      nominated: true,
    });
    if (path.kind !== "direct") this.#d.onPath("direct", null);
    this.#clearUpgrade();
    this.#heard();
    this.#retransmitAll();
    this.#keepalive(); // confirms the path and measures its RTT at once
  }

  #isPathTo(to: UdpAddress, via: number): boolean {
    const path = this.#path;
    return path.kind === "direct" && path.to.ip === to.ip && path.to.port === to.port &&
      path.via === via;
  }

  #heard(): void {
    this.#pathHeardAt = this.#d.clock.now();
    if (this.#lostTimer !== undefined) this.#d.clock.clearTimeout(this.#lostTimer);
    this.#lostTimer = undefined;
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
    if (this.#path.kind === "direct") {
      this.stats.sent.direct++;
      this.#sendUdp(frame, this.#path.to, this.#path.via);
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
    return this.#path.kind === "direct"
      ? Math.max(LINK_TIMING.rtoMinMs, 2 * (this.#path.rttMs ?? 0)) // unmeasured: the minimum
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
      path: this.#path.kind,
      direct_to: this.directTo,
      rtt_ms: this.rttMs === null ? null : Math.round(this.rttMs * 10) / 10,
      in_flight: this.#stream.inFlight,
      validated_paths: this.#paths.size,
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
    for (const t of [this.#keepaliveTimer, this.#lostTimer, this.#upgradeTimer]) {
      if (t !== undefined) this.#d.clock.clearTimeout(t);
    }
  }
}
