/**
 * A worker's peers: what the rendezvous says about them, one
 * {@linkcode PeerLink} each, and the plumbing between the links, the UDP
 * sockets and the rendezvous session.
 *
 * @module
 */

import { type Clock, coarseClock, systemClock } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import { frameSessionId, fromBase64, isPeerFrame, toBase64 } from "./frame.ts";
import { type LinkEvent, PeerLink } from "./link.ts";
import { SendBudget } from "./send_budget.ts";
import { TokenBucket } from "../core/rate_limit.ts";
import { StunClient } from "../stun/client.ts";
import { DISCOVERY_SCHEDULE, hostInterfaces, localCandidates } from "../stun/discovery.ts";
import type {
  Candidate,
  ClientMessage,
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

/**
 * The worker's extra sockets (hard-side rounds and rerolls), at most, and
 * those of them only rerolls may take: one hard-side round's worth, so a
 * group member that asks for introduction after introduction (or 500 of
 * them) holds 128 descriptors at most, not 256 per round.
 */
export const EXTRA_SOCKETS = { max: 128, rerollReserve: 8 } as const;

/**
 * Punching packets (checks, sprays, openings) a worker sends a second, all
 * links together, and at once: one easy-side spray (500 a second) beside
 * dozens of rounds of checks (20 a second each) fits; 500 introductions at
 * once get their checks in turn instead of a backlog of sealing that grows
 * without bound (RFC 8445 §14: one Ta for every check list of an agent).
 */
export const PUNCH_PACE = { perSecond: 2000, burst: 1000 } as const;

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
   * Extra sockets open at once, worker-wide: the hard-side rounds of every
   * link share them (a round gets what is free and takes more as others
   * end), and `EXTRA_SOCKETS.rerollReserve` of them are kept for rerolls'
   * fresh sockets. Whatever peers ask for, the worker's descriptors stay
   * about 200.
   * @default {128}
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
  #sockets = new Map<number, UdpEndpoint>();
  #nextVia = 1;
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
  /** Punching packets skipped over {@linkcode PUNCH_PACE}. */
  pacedOut = 0;
  /** Extra sockets open now (hard-side rounds and rerolls; at most {@linkcode EXTRA_SOCKETS}). */
  get extraSockets(): number {
    return this.#sockets.size;
  }
  #pace: TokenBucket;
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
  setHandlers(handlers: Pick<PeerManagerOptions, "onPeer" | "onPeerInfo" | "onPath">): void {
    this.#o = { ...this.#o, ...handlers };
  }

  /** @ignore A worker makes its own; see `startWorker()`. */
  constructor(options: PeerManagerOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#linkClock = coarseClock(this.#clock);
    this.budget = new SendBudget(this.#clock);
    this.#pace = new TokenBucket(PUNCH_PACE.perSecond, PUNCH_PACE.burst, this.#clock.now());
    for (const socket of [options.udp, options.udp6]) {
      if (!socket) continue;
      socket.onOther = (bytes, from) => this.#onUdp(bytes, from, 0);
      socket.onTransport = (bytes, from) => this.#onTransport(bytes, from, 0);
    }
  }

  /** The socket `via` names for a packet to `to` (0: the main one of `to`'s family). */
  #socket(via: number, to: UdpAddress): UdpEndpoint | undefined {
    if (via !== 0) return this.#sockets.get(via);
    // Only a dual-stack worker looks at the address (this runs per packet).
    const udp6 = this.#o.udp6;
    return udp6 && to.ip.includes(":") ? udp6 : this.#o.udp;
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
      const socket = this.#socket(direct.via, direct.to);
      if (socket) {
        this.pathBytes.direct.sent += packet.length - 1;
        return socket.send(packet, direct.to).catch(() => {});
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
      pace: () => this.#pace.take(this.#clock.now()) || (this.pacedOut++, false),
      ...((this.#o.openingTtl ?? DEFAULT_OPENING_TTL) > 0
        ? {
          sendOpening: (bytes, to, via, ttl) => this.#sendOpening(bytes, to, via, ttl),
          openingTtl: this.#o.openingTtl ?? DEFAULT_OPENING_TTL,
        }
        : {}),
      sendRelay: (bytes) => {
        this.#o.sendToRendezvous({ type: "relay", to: peerId, data: toBase64(bytes) });
      },
      openSockets: (count) => this.#openSockets(count, EXTRA_SOCKETS.rerollReserve),
      ...((this.#o.stunServers?.length ?? 0) > 0
        ? { openRerollSocket: () => this.#openRerollSocket() }
        : {}),
      closeSockets: (vias) => this.#closeSockets(vias),
      requestConnect: () => this.connect(peerId),
      onMessage: (payload, path) => this.#o.onMessage?.(peerId, payload, path),
      onPath: (path, rttMs) => {
        this.#o.sendToRendezvous({ type: "path_update", peer_id: peerId, path, rtt_ms: rttMs });
        this.#o.onPath?.(peerId, path, rttMs);
      },
      onPaths: () => this.#indexPaths(link!),
      trace: (event) => {
        this.#indexPaths(link!);
        this.#logLink(log, link!, event);
        if (event.type === "punch_failed" && event.suspect) {
          // Its mapping toward that peer failed: others from the same socket may too.
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
    const socket = this.#socket(via, to);
    socket?.send(bytes, to).catch(() => {}); // UDP: a failed send is a lost packet
  }

  async #sendOpening(bytes: Uint8Array, to: UdpAddress, via: number, ttl: number): Promise<void> {
    if (!this.budget.take(to.ip)) return;
    const socket = this.#socket(via, to);
    await socket?.sendWithTtl(bytes, to, ttl).then((sent) => {
      if (sent || this.#openingFailed) return;
      this.#openingFailed = true;
      this.#o.logger.warn("cannot send low-TTL opening packets; punching goes on without", {
        via,
      });
    });
  }

  #openingFailed = false;

  /** Opens up to `count` extra sockets, leaving `reserve` of the pool free. */
  #openSockets(count: number, reserve = 0): number[] {
    const main = this.#o.udp;
    if (!main) return [];
    const room = (this.#o.maxExtraSockets ?? EXTRA_SOCKETS.max) - reserve - this.#sockets.size;
    const vias: number[] = [];
    for (let i = 0; i < Math.min(count, room); i++) {
      let socket: UdpEndpoint;
      try {
        socket = UdpEndpoint.bind({ hostname: main.local.ip, port: 0 });
      } catch (error) {
        this.#o.logger.warn("cannot open more udp sockets", { opened: i, error });
        break;
      }
      const via = this.#nextVia++;
      socket.onOther = (bytes, from) => this.#onUdp(bytes, from, via);
      socket.onTransport = (bytes, from) => this.#onTransport(bytes, from, via);
      this.#sockets.set(via, socket);
      vias.push(via);
    }
    return vias;
  }

  /**
   * A reroll's socket: fresh, so no clash has moved its mapping; its public
   * candidate from the first STUN server that answers (with the discovery's
   * short schedule), its local ones from the host's interfaces.
   */
  async #openRerollSocket(): Promise<{ via: number; candidates: Candidate[] } | null> {
    const [via] = this.#openSockets(1);
    const socket = via === undefined ? undefined : this.#sockets.get(via);
    if (via === undefined || !socket) return null;
    const stun = new StunClient((bytes, to) => socket.send(bytes, to), {
      family: socket.local.family,
      ...DISCOVERY_SCHEDULE,
      clock: this.#clock,
    });
    socket.onStun = (bytes, from) => void stun.handle(bytes, from);
    const servers = this.#o.stunServers ?? [];
    const mapped = await Promise.any(servers.map((server) => stun.binding(server)))
      .then((result) => result.mapped, () => undefined);
    socket.onStun = () => {};
    if (!this.#sockets.has(via)) return null; // closed meanwhile
    const locals = localCandidates(hostInterfaces(), socket.local)
      .map((address): Candidate => ({ ...address, kind: "local" }));
    const candidates = mapped ? [{ ...mapped, kind: "public" } as Candidate, ...locals] : locals;
    this.#o.logger.info("reroll socket bound", {
      via,
      udp_local: `${socket.local.ip}:${socket.local.port}`,
      udp_public: mapped ? `${mapped.ip}:${mapped.port}` : null,
    });
    return { via, candidates };
  }

  #closeSockets(vias: number[]): void {
    for (const via of vias) {
      const socket = this.#sockets.get(via);
      this.#sockets.delete(via);
      void socket?.close();
    }
  }

  #onUdp(bytes: Uint8Array, from: UdpAddress, via: number): void {
    if (!isPeerFrame(bytes)) return;
    const link = this.#bySession.get(frameSessionId(bytes)!);
    if (link) void link.receive(bytes, from, via);
  }

  /** Handles the rendezvous's peer messages. */
  handle(message: PeerServerMessage): void {
    switch (message.type) {
      case "peers":
        for (const peer of message.peers) this.#learn(peer);
        return;
      case "peer_joined":
      case "peer_updated":
        this.#learn(message.peer);
        return;
      case "peer_left": {
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
        this.#o.logger.info("peer left", { peer_id: message.peer_id });
        return;
      }
      case "punch": {
        this.#punched.add(message.peer_id);
        const link = this.#link(message.peer_id);
        for (const id of link.sessionIds.slice(1)) this.#bySession.delete(id);
        this.#bySession.set(message.session_id, link);
        // The rendezvous sees the peer come from these: they may be punched hard.
        for (const c of message.candidates) {
          if (c.kind === "public" && c.vouched !== false) this.budget.vouch(c.ip);
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
        void this.#links.get(message.from)?.receive(bytes, undefined);
        return;
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
    if ((newlyReported || moved) && this.#ownEndpoint !== undefined) this.connect(peer.worker_id);
  }

  #ownEndpoint?: string;

  /**
   * Call after each UDP endpoint report (or once with null when UDP is off):
   * peers waiting for it are introduced, and a moved endpoint re-punches
   * every link.
   */
  ownEndpointReported(publicEndpoint: UdpAddress | null): void {
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
    for (const link of this.#links.values()) link.close();
    await Promise.all([...this.#sockets.values()].map((s) => s.close()));
    this.#sockets.clear();
  }
}
