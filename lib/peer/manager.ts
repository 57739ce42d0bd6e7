/**
 * A worker's peers: what the rendezvous says about them, one
 * {@linkcode PeerLink} each, and the plumbing between the links, the UDP
 * sockets and the rendezvous session.
 *
 * @module
 */

import { type Clock, coarseClock, systemClock } from "../core/clock.ts";
import { Reintroductions } from "./reintroductions.ts";
import type { Logger } from "../core/log.ts";
import { frameSessionId, fromBase64, isPeerFrame, toBase64 } from "./frame.ts";
import { type LinkEvent, PeerLink } from "./link.ts";
import { SendBudget } from "./send_budget.ts";
import { EXTRA_SOCKETS, PunchSockets } from "./punch_sockets.ts";
import type {
  ClientMessage,
  LeaveReason,
  PathKind,
  PeerInfo,
  PeerServerMessage,
  UdpAddress,
} from "../protocol/messages.ts";
import { UdpEndpoint } from "./udp_endpoint.ts";
import type { PeerTransport } from "./transport.ts";

/**
 * The default TTL of opening packets: enough to cross a home NAT and a
 * carrier NAT right behind it (a TTL-n packet is forwarded by n - 1
 * routers), short of the peer's NAT on any path with three or more routers
 * between the two NATs (see docs/punching.md, "Opening packets").
 */
export const DEFAULT_OPENING_TTL = 3;

/** Options for {@linkcode PeerManager}. */
export interface PeerManagerOptions {
  /** The worker's main UDP socket (the one STUN used); none: relay only. */
  udp?: UdpEndpoint;
  /**
   * Its IPv6 socket, when the host has a global IPv6 address: "socket 0"
   * for IPv6 destinations (no NAT there, so no STUN: its addresses are
   * local candidates).
   */
  udp6?: UdpEndpoint;
  /** Sends to the rendezvous; false when no session is open. */
  sendToRendezvous: (message: ClientMessage) => boolean;
  /** Connect to every peer of the group as it appears. @default {false} */
  autoConnect?: boolean;
  /** Delivers each peer message, in order. */
  onMessage?: (peerId: string, payload: Uint8Array, path: PathKind) => void;
  /** A peer became known (from `peers` or `peer_joined`). */
  onPeer?: (peerId: string) => void;
  /** Anything the rendezvous said about a peer: joined, updated (key, certificate, endpoint). */
  onPeerInfo?: (peer: PeerInfo) => void;
  /** A link's path changed. */
  onPath?: (peerId: string, path: PathKind, rttMs: number | null) => void;
  /**
   * The transport's stand-ins are batched sockets, which hand packets over
   * in buffers reused at once: a packet for one of Deno's sockets (IPv6)
   * is copied first.
   */
  batchedStandIns?: boolean;
  /** The rendezvous said a peer left; `reason` "revoked": drop everything of it. */
  onPeerLeft?: (peerId: string, reason?: LeaveReason) => void;
  /**
   * Extra sockets open at once, worker-wide: the hard-side rounds of every
   * link share them (a round gets what is free and takes more as others
   * end), and `EXTRA_SOCKETS.rerollReserve` of them are kept for rerolls'
   * fresh sockets. `EXTRA_SOCKETS.max` unless set.
   * @default {512}
   */
  maxExtraSockets?: number;
  /**
   * Sends a transport packet (without its envelope byte) through the
   * rendezvous relay; false when it could not (no session, full buffer).
   */
  sendRelayPacket?: (peerId: string, packet: Uint8Array) => boolean;
  /**
   * The highest IP TTL of a punch's opening packets (they go out at 2, 3,
   * … up to it; see `PeerLinkDeps.sendOpening`); 0 sends none.
   * @default {DEFAULT_OPENING_TTL}
   */
  openingTtl?: number;
  /**
   * STUN servers (`host:port`) a reroll's fresh socket learns its mapping
   * from; none: failed rounds are not rerolled.
   */
  stunServers?: readonly string[];
  /** Time source, for tests. @default {systemClock} */
  clock?: Clock;
  /** Where link events are logged. */
  logger: Logger;
}

/** The peers of one worker. */
export class PeerManager {
  #o: PeerManagerOptions;
  #clock: Clock;
  /**
   * The links' timers: one timer of `#clock` for all of them, 5 ms apart at
   * most (a round's checks, sprays and hard rounds wake thousands of times a
   * second with many introductions; each of Deno's timers is an object and
   * two closures).
   */
  #linkClock: Clock;
  #links = new Map<string, PeerLink>();
  #bySession = new Map<string, PeerLink>();
  #peers = new Map<string, PeerInfo>();
  readonly #sockets: PunchSockets;
  #connectAt = new Map<string, number>();
  /** Peers to introduce once both endpoints are known and a session is open. */
  #wanted = new Set<string>();
  /**
   * Links by every path they validated (`via|ip|port`), for transport
   * packets: a peer's packet that comes by another of its working paths
   * than the one we send on is its own all the same.
   */
  #byAddress = new Map<string, PeerLink>();
  #addressesOf = new Map<PeerLink, readonly string[]>();
  #transport?: PeerTransport;
  /** Transport packets from addresses no link validated: dropped. */
  strayPackets = 0;
  /** Punching packets skipped over the worker's pace (`PUNCH_PACE`). */
  get pacedOut(): number {
    return this.#sockets.pacedOut;
  }
  /** Extra sockets open now (hard-side rounds and rerolls; at most `EXTRA_SOCKETS.max`). */
  get extraSockets(): number {
    return this.#sockets.size;
  }
  /** Peers the rendezvous introduced us to (their transport packets are taken). */
  #punched = new Set<string>();
  /** @ignore Punching packets to addresses that have not answered: paced per IP. */
  readonly budget: SendBudget;
  /** Transport bytes (without the envelope byte) by path and direction. */
  readonly pathBytes = { direct: { sent: 0, received: 0 }, relay: { sent: 0, received: 0 } };

  /**
   * @ignore Who hears about peers (the layers above, made after the
   * manager): replaces the handlers given as options. See `startWorker()`.
   */
  setHandlers(
    handlers: Pick<
      PeerManagerOptions,
      "onPeer" | "onPeerInfo" | "onPath" | "onMessage" | "onPeerLeft"
    >,
  ): void {
    this.#o = { ...this.#o, ...handlers };
  }

  /** @ignore A worker makes its own; see `startWorker()`. */
  constructor(options: PeerManagerOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#linkClock = coarseClock(this.#clock);
    this.budget = new SendBudget(this.#clock);
    this.#reintroductions = new Reintroductions(
      this.#clock,
      (peerId) => this.connect(peerId),
      (peerId) => this.#peers.has(peerId) && this.#links.get(peerId)?.path !== "direct",
    );
    this.#sockets = new PunchSockets({
      udp: options.udp,
      udp6: options.udp6,
      max: options.maxExtraSockets,
      stunServers: options.stunServers,
      clock: this.#clock,
      logger: options.logger,
      onOther: (bytes, from, via) => this.#onUdp(bytes, from, via),
      onTransport: (bytes, from, via) => this.#onTransport(bytes, from, via),
    });
    for (const socket of [options.udp, options.udp6]) {
      if (!socket) continue;
      socket.onOther = (bytes, from) => this.#onUdp(bytes, from, 0);
      socket.onTransport = (bytes, from) => this.#onTransport(bytes, from, 0);
    }
  }

  /** @ignore Attaches the transport that rides this manager's paths; the worker does. */
  setTransport(transport: PeerTransport): void {
    this.#transport = transport;
  }

  /**
   * Carries a transport packet (with its envelope byte) to `peerId`: over
   * the direct path when there is one, else through the relay. Resolves
   * once the bytes may be reused.
   */
  sendPacket(peerId: string, packet: Uint8Array): Promise<unknown> | void {
    const direct = this.#links.get(peerId)?.direct;
    if (direct) {
      const socket = this.#sockets.socket(direct.via, direct.to);
      if (socket) {
        this.pathBytes.direct.sent += packet.length - 1;
        const bytes = !socket.ffi && this.#o.batchedStandIns ? packet.slice() : packet;
        return socket.sendPacket(bytes, direct.to);
      }
    }
    if (this.#o.sendRelayPacket?.(peerId, packet.subarray(1))) {
      this.pathBytes.relay.sent += packet.length - 1;
    }
  }

  /**
   * A transport packet from `peerId` that the rendezvous relayed (without
   * the envelope byte): counted, and handed to the transport.
   */
  receiveRelayed(peerId: string, packet: Uint8Array): Promise<unknown> | undefined {
    this.pathBytes.relay.received += packet.length;
    return this.#transport?.receive(peerId, packet);
  }

  #onTransport(bytes: Uint8Array, from: UdpAddress, via: number): Promise<unknown> | undefined {
    const link = this.#byAddress.get(`${via}|${from.ip}|${from.port}`);
    if (!link || !this.#transport) {
      this.strayPackets++;
      return undefined;
    }
    this.pathBytes.direct.received += bytes.length - 1;
    return this.#transport.receive(link.peerId, bytes.subarray(1));
  }

  /** Keeps {@linkcode PeerManager.#byAddress} in step with a link's validated paths. */
  #indexPaths(link: PeerLink, closing = false): void {
    const before = this.#addressesOf.get(link) ?? [];
    const now = closing ? [] : link.validatedPaths;
    if (before.length === now.length && before.every((key, i) => key === now[i])) return;
    for (const key of before) {
      if (!now.includes(key) && this.#byAddress.get(key) === link) this.#byAddress.delete(key);
    }
    for (const key of now) this.#byAddress.set(key, link);
    if (now.length === 0) this.#addressesOf.delete(link);
    else this.#addressesOf.set(link, now);
  }

  /** Peers the rendezvous told us about. */
  get peers(): PeerInfo[] {
    return [...this.#peers.values()];
  }

  /** What the rendezvous told us about `peerId`, if anything. */
  peer(peerId: string): PeerInfo | undefined {
    return this.#peers.get(peerId);
  }

  /**
   * Whether `peerId` has been introduced (its link has a punch session):
   * the link then punches again by itself when it must, and a new
   * introduction would only restart a punch under way or disturb a direct
   * path that works.
   */
  introduced(peerId: string): boolean {
    return (this.#links.get(peerId)?.sessionIds.length ?? 0) > 0;
  }

  /**
   * Whether the rendezvous introduced us to `peerId` (since it last joined):
   * known from the moment its `punch` arrives, before the link has taken it in.
   */
  wasIntroduced(peerId: string): boolean {
    return this.#punched.has(peerId);
  }

  /** The path to `peerId` now (the relay until a direct path is punched). */
  pathOf(peerId: string): { path: PathKind; rttMs: number | null } {
    const link = this.#links.get(peerId);
    return link ? { path: link.path, rttMs: link.rttMs } : { path: "relay", rttMs: null };
  }

  /** Call after every registration with the rendezvous. */
  onRegistered(): void {
    this.#o.sendToRendezvous({ type: "list_peers", watch: true });
    // Links that lost their introduction with the session ask again.
    for (const peerId of [...this.#wanted]) this.connect(peerId);
  }

  /**
   * Asks the rendezvous to introduce us to `peerId`, as soon as both sides
   * have reported their UDP endpoint (an introduction without candidates
   * could only ever relay).
   */
  connect(peerId: string): void {
    const peer = this.#peers.get(peerId);
    if (this.#ownEndpoint === undefined || !peer || peer.nat_mapping === null) {
      this.#wanted.add(peerId);
      return;
    }
    const sent = this.#o.sendToRendezvous({ type: "connect", peer_id: peerId });
    this.#connectAt.set(peerId, this.#clock.now());
    // Without a session the request waits for the next registration.
    if (sent) this.#wanted.delete(peerId);
    else this.#wanted.add(peerId);
    this.#o.logger.info("peer connect requested", { peer_id: peerId, sent, at: this.#clock.now() });
  }

  /**
   * Sends `payload` to `peerId`: ordered, lossless, over the best path there
   * is (relay until a direct path exists). Authenticated under the session
   * key of the introduction, **not encrypted**: for diagnostics (the hellos);
   * applications use `Worker.connect`, which is end-to-end encrypted.
   */
  send(peerId: string, payload: Uint8Array): void {
    this.#link(peerId).send(payload);
  }

  #link(peerId: string): PeerLink {
    let link = this.#links.get(peerId);
    if (link) return link;
    const log = this.#o.logger.child({ peer_id: peerId });
    link = new PeerLink(peerId, {
      clock: this.#linkClock,
      sendUdp: (bytes, to, via) => this.#sendUdp(bytes, to, via),
      heard: (from) => this.budget.heard(from.ip),
      pace: () => this.#sockets.pace(),
      ...((this.#o.openingTtl ?? DEFAULT_OPENING_TTL) > 0
        ? {
          sendOpening: (bytes, to, via, ttl) => this.#sendOpening(bytes, to, via, ttl),
          openingTtl: this.#o.openingTtl ?? DEFAULT_OPENING_TTL,
        }
        : {}),
      sendRelay: (bytes) => {
        this.#o.sendToRendezvous({ type: "relay", to: peerId, data: toBase64(bytes) });
      },
      openSockets: (count) => this.#sockets.open(count, EXTRA_SOCKETS.rerollReserve),
      ...((this.#o.stunServers?.length ?? 0) > 0
        ? { openRerollSocket: () => this.#sockets.openReroll() }
        : {}),
      closeSockets: (vias) => this.#sockets.close(vias),
      requestConnect: () => this.connect(peerId),
      onMessage: (payload, path) => this.#o.onMessage?.(peerId, payload, path),
      onPath: (path, rttMs) => {
        this.#o.sendToRendezvous({ type: "path_update", peer_id: peerId, path, rtt_ms: rttMs });
        this.#o.onPath?.(peerId, path, rttMs);
      },
      onPaths: () => this.#indexPaths(link!),
      ownMapped: () => this.#ownMapped,
      trace: (event) => {
        this.#indexPaths(link!);
        this.#logLink(log, link!, event);
        // Its mapping toward that peer failed: others from the same socket may
        // too — unless the peer sits behind our own public address (our NAT, or
        // our carrier's): no hairpinning explains that failure, not our mapping.
        if (event.type === "punch_failed" && event.suspect && !this.#behindUs(peerId)) {
          for (const other of this.#links.values()) if (other !== link) other.suspectMapping();
        }
      },
    });
    this.#links.set(peerId, link);
    return link;
  }

  #logLink(log: Logger, link: PeerLink, event: LinkEvent): void {
    const now = this.#clock.now();
    const since = link.stats.punchAt === null ? undefined : now - link.stats.punchAt;
    const connectAt = this.#connectAt.get(link.peerId);
    const { type, ...fields } = event;
    const message = {
      punch: "peer punch started",
      direct: "peer path direct",
      punch_failed: "peer punch failed",
      checks: "peer checks started",
      path_lost: "peer direct path lost",
      relay: "peer path relay",
      first_relay: "peer first relayed frame sent",
      bad_introduction: "peer introduction rejected",
      reroll: "peer punch rerolled",
      reroll_unanswered: "peer reroll unanswered",
    }[type];
    log[type === "bad_introduction" ? "warn" : "info"](message, {
      ...fields,
      ms_since_punch: since,
      ms_since_connect: connectAt === undefined ? undefined : now - connectAt,
      attempts: link.stats.punchAttempts,
    });
  }

  #sendUdp(bytes: Uint8Array, to: UdpAddress, via: number): void {
    if (!this.budget.take(to.ip)) return; // an address that never answered: paced
    const socket = this.#sockets.socket(via, to);
    socket?.sendPacket(bytes, to); // UDP: a failed send is a lost packet
  }

  async #sendOpening(bytes: Uint8Array, to: UdpAddress, via: number, ttl: number): Promise<void> {
    if (!this.budget.take(to.ip)) return;
    const socket = this.#sockets.socket(via, to);
    await socket?.sendWithTtl(bytes, to, ttl).then((sent) => {
      if (sent || this.#openingFailed) return;
      this.#openingFailed = true;
      this.#o.logger.warn("cannot send low-TTL opening packets; punching goes on without", {
        via,
      });
    });
  }

  #openingFailed = false;

  #onUdp(bytes: Uint8Array, from: UdpAddress, via: number): void {
    if (!isPeerFrame(bytes)) return;
    const link = this.#bySession.get(frameSessionId(bytes)!);
    if (link) void link.receive(bytes, from, via);
  }

  /** Handles the rendezvous's peer messages (a relayed frame: resolves once it is handled). */
  handle(message: PeerServerMessage): Promise<void> | void {
    switch (message.type) {
      case "peers":
        for (const peer of message.peers) this.#learn(peer);
        return;
      case "peer_joined":
      case "peer_updated":
        this.#learn(message.peer);
        return;
      case "peer_left": {
        // First, while the path is still there to carry a connection's close.
        this.#o.onPeerLeft?.(message.peer_id, message.reason);
        this.#peers.delete(message.peer_id);
        const link = this.#links.get(message.peer_id);
        if (link) {
          link.close();
          for (const id of link.sessionIds) this.#bySession.delete(id);
          this.#links.delete(message.peer_id);
          this.#indexPaths(link, true);
        }
        this.#transport?.forget(message.peer_id);
        this.#punched.delete(message.peer_id);
        this.#reintroductions.forget(message.peer_id);
        this.#o.logger.info("peer left", { peer_id: message.peer_id, reason: message.reason });
        return;
      }
      case "punch": {
        this.#punched.add(message.peer_id);
        this.#transport?.introduced(message.peer_id);
        const link = this.#link(message.peer_id);
        for (const id of link.sessionIds.slice(1)) this.#bySession.delete(id);
        this.#bySession.set(message.session_id, link);
        // The rendezvous sees the peer come from these: they may be punched hard.
        for (const c of message.candidates) {
          if (c.kind !== "local" && c.vouched !== false) this.budget.vouch(c.ip);
        }
        void link.punch(message);
        return;
      }
      case "relayed": {
        let bytes: Uint8Array;
        try {
          bytes = fromBase64(message.data);
        } catch {
          return;
        }
        return this.#links.get(message.from)?.receive(bytes, undefined);
      }
    }
  }

  #learn(peer: PeerInfo): void {
    const before = this.#peers.get(peer.worker_id);
    this.#peers.set(peer.worker_id, peer);
    if (before === undefined) this.#o.onPeer?.(peer.worker_id);
    this.#o.onPeerInfo?.(peer);
    const interested = this.#o.autoConnect || this.#links.has(peer.worker_id) ||
      this.#wanted.has(peer.worker_id);
    if (!interested) return;
    // Introduce only once both sides have reported their UDP endpoint (or
    // that they have none): an introduction without candidates is relay-only.
    const newlyReported = peer.nat_mapping !== null &&
      (before === undefined || before.nat_mapping === null);
    const moved = before?.public != null &&
      (before.public.ip !== peer.public?.ip || before.public.port !== peer.public?.port);
    // A gateway mapping that came (or moved) is a candidate that may open
    // what punching could not: introduced again, unless already direct.
    const mapped = peer.mapped != null && before !== undefined &&
      (before.mapped?.ip !== peer.mapped.ip || before.mapped?.port !== peer.mapped.port) &&
      this.#links.get(peer.worker_id)?.path !== "direct";
    if (mapped && this.#ownEndpoint !== undefined) this.#reintroductions.request(peer.worker_id);
    else if ((newlyReported || moved) && this.#ownEndpoint !== undefined) {
      this.connect(peer.worker_id);
    }
  }

  readonly #reintroductions: Reintroductions;
  #ownMapped = false;
  #ownPublicIp: string | undefined;

  /** Whether `peerId` is seen at our own public address (behind our NAT, or our carrier's). */
  #behindUs(peerId: string): boolean {
    const theirs = this.#peers.get(peerId)?.public?.ip;
    return theirs !== undefined && theirs === this.#ownPublicIp;
  }

  /**
   * Call when our gateway's mapping of the socket comes or goes: rounds
   * planned from now on know the peer can reach us through it.
   */
  ownMappingReported(mapped: boolean): void {
    const came = mapped && !this.#ownMapped;
    this.#ownMapped = mapped;
    if (!came || this.#ownEndpoint === undefined) return;
    for (const [peerId, link] of this.#links) {
      if (link.path !== "direct") this.#reintroductions.request(peerId);
    }
  }

  #ownEndpoint?: string;

  /**
   * Call after each UDP endpoint report (or once with null when UDP is off):
   * peers waiting for it are introduced, and a moved endpoint re-punches
   * every link.
   */
  ownEndpointReported(publicEndpoint: UdpAddress | null): void {
    this.#ownPublicIp = publicEndpoint?.ip;
    const text = publicEndpoint ? `${publicEndpoint.ip}:${publicEndpoint.port}` : "none";
    const first = this.#ownEndpoint === undefined;
    if (text === this.#ownEndpoint) return;
    this.#ownEndpoint = text;
    for (const peer of this.#peers.values()) {
      if (peer.nat_mapping === null) continue;
      const wanted = this.#links.has(peer.worker_id) || this.#wanted.has(peer.worker_id);
      if (wanted || (first && this.#o.autoConnect)) this.connect(peer.worker_id);
    }
  }

  /** Each link's state, for the health endpoint. */
  snapshot(): Record<string, unknown> {
    return Object.fromEntries([...this.#links].map(([id, link]) => [id, link.snapshot()]));
  }

  /** Closes every link and extra socket. */
  async close(): Promise<void> {
    this.#reintroductions.close();
    for (const link of this.#links.values()) link.close();
    await this.#sockets.closeAll();
  }
}
