/**
 * One worker's link to one peer: punching a direct UDP path, keeping it,
 * falling back to the relay, and carrying small authenticated datagrams
 * (the hellos) over whichever path is current.
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
 * (`path_state.ts`), and the datagrams' replay window (`replay_window.ts`). Every
 * strategy is bounded in packets and time (`timing.ts`); docs/punching.md
 * tells the whole story with the lab's figures.
 *
 * @module
 */

import type { TimerId } from "../core/clock.ts";
import { ReplayWindow } from "./replay_window.ts";
import {
  type Frame,
  FrameError,
  importSessionKey,
  MAX_FRAME_PAYLOAD,
  openFrame,
  sealFrame,
} from "./frame.ts";
import type { PathKind, PunchMessage, UdpAddress } from "../protocol/messages.ts";

export { LINK_TIMING, openingLadder } from "./timing.ts";
import { LINK_TIMING } from "./timing.ts";
import { Rounds, type RoundsIntroduction } from "./rounds.ts";
import { PathState, show } from "./path_state.ts";
import type { LinkEvent } from "./link_events.ts";

export type { LinkEvent } from "./link_events.ts";
import type { LinkStats, PeerLinkDeps } from "./link_types.ts";
export type { LinkStats, PeerLinkDeps } from "./link_types.ts";

/**
 * An introduction from the rendezvous (its `punch`): the pair's session id
 * and key, our role, the peer's candidates and both NATs.
 */
interface Introduction extends RoundsIntroduction {
  key: CryptoKey;
  /** The peer's datagram numbers seen under this introduction. */
  window: ReplayWindow;
  /** Our next datagram number under it. */
  nextSeq: number;
}

/** A check frame: probe, ack or nominate. */
type Check = Extract<Frame, { nonce: string }>;

/** Datagrams held before the first introduction (then the oldest go). */
export const MAX_QUEUED_DATAGRAMS = 16;

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
    dropped: 0,
    punchAt: null,
    firstRelayAt: null,
    directAt: null,
    punchAttempts: 0,
    rerolls: 0,
  };
  #d: PeerLinkDeps;
  #session?: Introduction;
  #previous?: Introduction;
  #rounds: Rounds;
  #closed = false;
  /** Extra sockets this link opened and has not closed. */
  #extras = new Set<number>();
  /**
   * Sockets a round checks from: the main one (0) and rerolls' fresh ones.
   * A direct path on any other (the hard side's extras) is nominated.
   */
  #primaries = new Set<number>([0]);
  #upgradeTimer?: TimerId;
  #state: PathState;
  /** Datagrams waiting for the first introduction. */
  #queued: Uint8Array[] = [];
  // While a session key is being imported: frames that arrive meanwhile
  // wait for it instead of being dropped as unauthenticated.
  #introducing?: Promise<void>;

  constructor(peerId: string, deps: PeerLinkDeps) {
    this.peerId = peerId;
    this.#d = deps;
    const random = deps.random ?? Math.random;
    this.#rounds = new Rounds({
      clock: deps.clock,
      random: () => random(),
      timer: (fn, ms) => this.#timer(fn, ms),
      trace: (event) => this.#trace(event),
      introduction: () => this.#closed ? undefined : this.#session,
      directVia: () => this.#state.direct?.via,
      heardSince: (since, ours) => this.#state.heardSince(since, ours),
      sendUdp: (frame, to, via, ttl) => this.#sendUdp(frame, to, via, ttl),
      pace: () => deps.pace?.() ?? true,
      sendRelay: (frame) => this.#sendRelayFrame(frame),
      openSockets: (count) => {
        const vias = deps.openSockets(count);
        for (const v of vias) this.#extras.add(v);
        return vias;
      },
      openRerollSocket: deps.openRerollSocket && (() => deps.openRerollSocket!()),
      adopt: (via) => {
        this.#extras.add(via);
        this.#primaries.add(via);
      },
      closeSockets: (vias) => this.#closeSockets(vias),
      scheduleUpgrade: () => this.#scheduleUpgrade(),
      opening: deps.sendOpening !== undefined,
      openingTtl: deps.openingTtl ?? 3,
      rerolled: () => this.stats.rerolls++,
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
      probing: () => this.#rounds.current,
      stopProbing: (keepVia) => this.#rounds.stop(keepVia),
      closeSockets: (vias) => this.#closeSockets(vias),
      scheduleUpgrade: () => this.#scheduleUpgrade(),
      clearUpgrade: () => this.#clearUpgrade(),
      onPath: (path, rttMs) => deps.onPath(path, rttMs),
      onPaths: () => deps.onPaths?.(),
      trace: (event) => this.#trace(event),
      wentDirect: () => {
        this.stats.directAt ??= deps.clock.now();
      },
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

  // ---- introductions --------------------------------------------------------

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
    const same = this.#session?.id === message.session_id ? this.#session : undefined;
    if (!same) {
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
      ownMapped: this.#d.ownMapped?.() ?? false,
      window: same?.window ?? new ReplayWindow(),
      nextSeq: same?.nextSeq ?? 0,
    };
    this.stats.punchAt ??= this.#d.clock.now();
    if (this.#state.kind !== "direct") this.stats.punchAttempts++;
    // From the moment of introduction the relay carries data.
    for (const payload of this.#queued.splice(0)) this.send(payload);
    // A direct path may go on over the socket it uses while the new attempt runs.
    this.#rounds.introduced(message.session_id, message.delay_ms, this.#state.direct?.via);
  }

  /**
   * Another link's first round from the main socket failed: a clash in our
   * NAT may have moved that socket's mapping for every flow opened since
   * (Linux reuses the newest mapping of a source port), so a first round of
   * ours still under way from that socket, without a direct path yet, is
   * rerolled now rather than run out. Nothing happens otherwise.
   */
  suspectMapping(): void {
    this.#rounds.suspectMapping();
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
    let session: Introduction | undefined;
    for (const known of [this.#session, this.#previous]) {
      if (!known) continue;
      try {
        frame = await openFrame(bytes, known.key);
        if (frame.sessionId === known.id) {
          session = known;
          break;
        }
        frame = undefined;
      } catch (error) {
        if (!(error instanceof FrameError)) throw error;
      }
    }
    if (frame === undefined || session === undefined) return; // unauthenticated or stale: dropped
    if (from) this.#d.heard?.(from);
    if (from && frame.type !== "opened" && frame.type !== "reroll") this.#state.validate(from, via);
    // One handler per frame type; the relay's (`from` undefined) and the path's apart.
    switch (frame.type) {
      case "opened":
        if (!from) this.#rounds.peerOpened(frame);
        return;
      case "reroll":
        if (!from) this.#rounds.peerRerolled(frame);
        return;
      case "nominate":
        if (from) this.#onNominate(frame, from, via);
        return;
      case "probe":
        if (from) this.#onProbe(frame, from, via);
        return;
      case "ack":
        if (from) this.#onAck(frame, from, via);
        return;
      case "data":
        return this.#onData(frame, session, from, via);
      case "data_ack":
        return; // versions before datagrams acknowledged their messages; nothing waits for it
    }
  }

  /** The hard side says "use this path" (ICE's USE-CANDIDATE). */
  #onNominate(frame: Check, from: UdpAddress, via: number): void {
    this.#sendUdp({ ...frame, type: "ack" }, from, via);
    this.#state.follow(from, via);
  }

  #onProbe(frame: Check, from: UdpAddress, via: number): void {
    this.#sendUdp({ ...frame, type: "ack" }, from, via);
    // Triggered check (RFC 8445 §7.3.1.4): a probe that got through means
    // our probe back can too, now, whatever we sent there before (a mapping
    // the peer's NAT opened after our earlier probe was dropped).
    const probing = this.#rounds.current;
    if (probing && !probing.done && !this.#state.isPathTo(from, via)) {
      this.#rounds.triggeredCheck(probing, from, via, () => !this.#state.isPathTo(from, via));
    }
    this.#roamOnProbe(from, via);
  }

  #roamOnProbe(from: UdpAddress, via: number): void {
    // After a nomination only data and nominations move the path: a probe
    // may be a late one from a socket the peer has closed since.
    if (!this.#state.following) this.#state.roam(from, via);
  }

  #onAck(frame: Check, from: UdpAddress, via: number): void {
    const rtt = this.#d.clock.now() - frame.time;
    if (this.#state.keepaliveAnswered(frame.nonce, rtt)) return;
    const probing = this.#rounds.current;
    const sent = probing?.sent.get(frame.nonce);
    if (!probing || !sent) return; // not our nonce: replayed or stale
    // A round we gave up is over for the peer too (it rerolls or waits for
    // the next introduction, closing that round's sockets): a late answer
    // would select a path that is about to die (seen in the lab under load).
    if (probing.failed) return;
    this.#state.measured(from, via, rtt);
    this.#state.select(from, via, rtt);
  }

  /** A datagram: delivered once (replays and numbers older than the window are dropped). */
  #onData(
    frame: Extract<Frame, { type: "data" }>,
    session: Introduction,
    from: UdpAddress | undefined,
    via: number,
  ): void {
    if (!session.window.accept(frame.seq)) {
      this.stats.dropped++;
      return;
    }
    const pathKind: PathKind = from ? "direct" : "relay";
    this.stats.received[pathKind]++;
    if (from) this.#state.roam(from, via);
    this.#d.onMessage(frame.payload, pathKind);
    // Versions before datagrams retransmit a message until acknowledged:
    // the newest number taken acknowledges all before it.
    const ack: Frame = {
      type: "data_ack",
      sessionId: frame.sessionId,
      seq: session.window.newest + 1,
    };
    if (from) this.#sendUdp(ack, from, via);
    else this.#sendRelayFrame(ack);
  }

  // ---- sending --------------------------------------------------------------

  /**
   * Sends `payload` (at most {@linkcode MAX_FRAME_PAYLOAD} bytes) to the peer
   * as one datagram over the path in use: it may be lost, is never
   * delivered twice, and is authenticated but not encrypted (diagnostics;
   * applications use connections). Before the first introduction it waits
   * (the newest {@linkcode MAX_QUEUED_DATAGRAMS}) and asks for one.
   *
   * @throws {RangeError} when the payload is too large.
   */
  send(payload: Uint8Array): void {
    if (payload.length > MAX_FRAME_PAYLOAD) {
      throw new RangeError(`Cannot send ${payload.length} bytes: at most ${MAX_FRAME_PAYLOAD}`);
    }
    const session = this.#session;
    if (!session) {
      if (this.#queued.length >= MAX_QUEUED_DATAGRAMS) {
        this.#queued.shift();
        this.stats.dropped++;
      }
      this.#queued.push(payload);
      if (this.#queued.length === 1) this.#d.requestConnect();
      return;
    }
    const frame: Frame = { type: "data", sessionId: session.id, seq: session.nextSeq++, payload };
    const direct = this.#state.direct;
    if (direct) {
      this.stats.sent.direct++;
      this.#sendUdp(frame, direct.to, direct.via);
      return;
    }
    this.stats.sent.relay++;
    if (this.stats.firstRelayAt === null) {
      this.stats.firstRelayAt = this.#d.clock.now();
      this.#trace({ type: "first_relay" });
    }
    this.#sendRelayFrame(frame);
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
      validated_paths: this.#state.validatedCount,
      ...this.stats,
    };
  }

  /** Stops every timer and closes extra sockets. */
  close(): void {
    this.#rounds.close();
    this.#closeSockets([...this.#extras]);
    this.#closed = true;
    this.#state.close();
    if (this.#upgradeTimer !== undefined) this.#d.clock.clearTimeout(this.#upgradeTimer);
  }
}
