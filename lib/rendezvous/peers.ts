/**
 * The rendezvous's peer services: who sees whom (groups), change
 * notifications for watchers, introductions (`connect` → `punch` to both
 * sides at once) and the relay.
 *
 * Costs stay proportional to what is asked: events go only to sessions that
 * asked to watch, through a per-group index, so a fleet of workers that
 * never watch (the seed's) costs nothing here.
 *
 * @module
 */

import { randomHex } from "../core/encoding.ts";
import { addressScope, normalizeIp } from "../protocol/ip.ts";

import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import type {
  Candidate,
  ClientMessage,
  LeaveReason,
  NatMapping,
  PeerInfo,
  PunchMessage,
  ServerMessage,
  UdpAddress,
} from "../protocol/messages.ts";
import type { Registry, WorkerRecord } from "./registry.ts";
import { encodeRelayFrame, type RelayFrame } from "../protocol/relay_frame.ts";

/** What the directory needs of a rendezvous session. */
export interface PeerSession {
  readonly workerId: string;
  readonly group: string;
  /** Round trip to this worker, as it reported it. */
  rttMs: number | null;
  watching: boolean;
  /** Spends one of the session's `list_peers` tokens; false when none is left. */
  takeList(now: number): boolean;
  /** Spends one of the session's relay tokens; false when none is left. */
  takeRelay(now: number): boolean;
  /** Spends `bytes` of the session's binary relay budget; false when it is spent. */
  takeRelayBytes(now: number, bytes: number): boolean;
  send(message: ServerMessage): void;
  /** Sends a message that may be lost (a relayed frame); false when dropped. */
  sendDroppable(message: ServerMessage): boolean;
  /** Sends a binary frame unless the socket's send buffer is already full; false when dropped. */
  sendBinary(bytes: Uint8Array): boolean;
}

/** Two `connect`s for the same pair within this window make one introduction. */
const INTRODUCTION_DEDUP_MS = 3000;
/**
 * The longest wait between introductions of a pair: each one after which no
 * direct path was reported doubles the wait before the next (3 s, 6 s, 12 s,
 * …), so a pair that never succeeds — or a registrant that re-introduces
 * itself to aim probes somewhere — costs a few packets an hour, not a burst
 * every few seconds. A direct path resets it.
 */
export const MAX_INTRODUCTION_BACKOFF_MS = 300_000;

/** One pair's last introduction by this instance. */
interface PairIntroduction {
  at: number;
  sessionId: string;
  /** The first side that reported a direct path for it. */
  directFrom?: string;
  /** Both sides reported a direct path for it (one alone cannot reset the backoff). */
  direct?: boolean;
  /** Introductions before it after which no direct path was reported. */
  failed: number;
}

/** How long after `entry` the pair may be introduced again. */
function introductionWait(entry: PairIntroduction): number {
  if (entry.direct) return INTRODUCTION_DEDUP_MS;
  return Math.min(INTRODUCTION_DEDUP_MS * 2 ** entry.failed, MAX_INTRODUCTION_BACKOFF_MS);
}
/** Added to the later side's one-way delay so both sides start punching together. */
const START_MARGIN_MS = 20;

/** A record's peer view. */
export function peerInfo(record: WorkerRecord): PeerInfo {
  return {
    worker_id: record.worker_id,
    public: record.udp_endpoint?.public ?? null,
    local: record.udp_endpoint?.local ?? [],
    nat_mapping: record.udp_endpoint?.nat_mapping ?? null,
    // Only when there is one: the seed's and older workers see the shape they know.
    ...(record.udp_endpoint?.mapped ? { mapped: record.udp_endpoint.mapped } : {}),
    key: record.key,
    transport: record.transport,
  };
}

function candidates(record: WorkerRecord): Candidate[] {
  const udp = record.udp_endpoint;
  if (udp === null) return [];
  // ICE order (RFC 8445 §5.1.2): host candidates first, then server-reflexive.
  // Vouched: the worker's session comes from this IP, so a spray at it
  // reaches that worker's own network, not someone it names.
  const seenAt = (ip: string) =>
    record.observed_ip !== null && normalizeIp(ip) === record.observed_ip;
  const out: Candidate[] = udp.local.map((a) => ({ ...a, kind: "local" as const }));
  const listed = (a: UdpAddress) => out.some((c) => c.ip === a.ip && c.port === a.port);
  if (udp.public && !listed(udp.public)) {
    out.push({ ...udp.public, kind: "public", vouched: seenAt(udp.public.ip) });
  }
  // The IPv6 socket's endpoint as IPv6 STUN saw it, where it is not one of
  // the locals already (a NAT66 or a rewriting firewall in front).
  const v6 = udp.public6;
  if (v6 && !listed(v6)) {
    out.push({ ...v6, kind: "public", vouched: seenAt(v6.ip) });
  }
  // A gateway's mapping, last (older workers keep the first 18): a candidate
  // only where it is public; a private or shared one says the gateway is
  // behind another NAT, and reaches no peer outside it.
  const mapped = udp.mapped;
  if (mapped && addressScope(mapped.ip) === "global") {
    out.push({ ip: mapped.ip, port: mapped.port, kind: "mapped", vouched: seenAt(mapped.ip) });
  }
  return out;
}

function randomBase64(bytes: number): string {
  return btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(bytes))));
}

/** Options for {@linkcode PeerDirectory}. */
export interface PeerDirectoryOptions {
  registry: Registry;
  /** The registered session of a worker on this instance. */
  sessionOf: (workerId: string) => PeerSession | undefined;
  clock: Clock;
  logger: Logger;
  /**
   * Claims the introduction of a pair fleet-wide (instances of a fleet);
   * false when another instance introduced it within the dedup window.
   * Without it, each instance deduplicates its own.
   */
  claimIntroduction?: (pair: string, sessionId: string, windowMs: number) => Promise<boolean>;
}

/** Groups, watchers, introductions and the relay. */
export class PeerDirectory {
  #o: PeerDirectoryOptions;
  #watchers = new Map<string, Set<PeerSession>>();
  #introductions = new Map<string, PairIntroduction>();
  #prunedAt = 0;
  /** Counters for logs and the listing. */
  readonly stats = {
    introductions: 0,
    /** `connect`s not introduced: the pair was introduced within its (backed-off) wait. */
    introductionsDeferred: 0,
    relayed: 0,
    relayRejected: 0,
    /** `list_peers` refused over the session's rate. */
    listsRefused: 0,
    /** Relayed JSON frames dropped: the receiver's send buffer was full. */
    relayDropped: 0,
    /** Binary transport packets carried, and dropped (over budget, full buffer, no peer). */
    packetsRelayed: 0,
    packetsDropped: 0,
    /** Bytes relayed: JSON `relay` payloads (base64, as sent) and binary transport packets. */
    relayBytes: 0,
  };

  constructor(options: PeerDirectoryOptions) {
    this.#o = options;
  }

  #notify(group: string, except: string, message: ServerMessage): void {
    const watchers = this.#watchers.get(group);
    if (!watchers) return;
    for (const watcher of watchers) if (watcher.workerId !== except) watcher.send(message);
  }

  /** A worker registered. */
  joined(session: PeerSession, record: WorkerRecord): void {
    this.#notify(session.group, session.workerId, { type: "peer_joined", peer: peerInfo(record) });
  }

  /** A worker's UDP endpoint changed. */
  updated(session: PeerSession, record: WorkerRecord): void {
    this.#notify(session.group, session.workerId, { type: "peer_updated", peer: peerInfo(record) });
  }

  /** A worker de-registered (or its session ended); `why`: "revoked", or none. */
  left(session: PeerSession, deregistered: boolean, why?: LeaveReason): void {
    this.#watchers.get(session.group)?.delete(session);
    if (deregistered) this.remoteLeft(session.workerId, session.group, why);
  }

  /**
   * `reporter` has a direct path to `peer`. When the pair was last
   * introduced by this instance, the first report for that introduction
   * returns when (for time to direct: each introduction counts once);
   * undefined otherwise. Once both sides reported, the pair's backoff ends.
   */
  firstDirectSince(reporter: string, peer: string): number | undefined {
    const entry = this.#introductions.get([reporter, peer].sort().join("\n"));
    if (!entry) return undefined;
    if (entry.directFrom === undefined) {
      entry.directFrom = reporter;
      return entry.at;
    }
    if (entry.directFrom !== reporter) entry.direct = true;
    return undefined;
  }

  /** A worker on another instance of the fleet registered (or moved there). */
  remoteJoined(record: WorkerRecord): void {
    this.#notify(record.group, record.worker_id, { type: "peer_joined", peer: peerInfo(record) });
  }

  /** A worker on another instance changed its record. */
  remoteUpdated(record: WorkerRecord): void {
    this.#notify(record.group, record.worker_id, { type: "peer_updated", peer: peerInfo(record) });
  }

  /** A worker (here, or on another instance of the fleet) left the fleet. */
  remoteLeft(workerId: string, group: string, why?: LeaveReason): void {
    this.#notify(group, workerId, {
      type: "peer_left",
      peer_id: workerId,
      ...(why ? { reason: why } : {}),
    });
  }

  /** Handles the peer messages; returns false for any other message. */
  async handle(session: PeerSession, message: ClientMessage): Promise<boolean> {
    switch (message.type) {
      case "list_peers":
        // A listing is the largest answer there is: a few a minute each.
        if (!session.takeList(this.#o.clock.now())) {
          this.stats.listsRefused++;
          session.send({
            type: "error",
            code: "rate_limited",
            message: "Cannot list peers: too many list_peers (watch: true keeps a list current)",
          });
          return true;
        }
        await this.#listPeers(session, message.watch);
        return true;
      case "connect":
        await this.#connect(session, message.peer_id);
        return true;
      case "relay":
        this.#relay(session, message.to, message.data);
        return true;
      default:
        return false;
    }
  }

  async #listPeers(session: PeerSession, watch: boolean): Promise<void> {
    if (watch && !session.watching) {
      session.watching = true;
      let set = this.#watchers.get(session.group);
      if (!set) this.#watchers.set(session.group, set = new Set());
      set.add(session);
    }
    const records = await this.#o.registry.list();
    session.send({
      type: "peers",
      peers: records
        .filter((r) => r.group === session.group && r.worker_id !== session.workerId)
        .map(peerInfo),
    });
  }

  #peer(session: PeerSession, peerId: string): PeerSession | undefined {
    const peer = this.#o.sessionOf(peerId);
    if (peer === undefined || peer.group !== session.group || peerId === session.workerId) {
      session.send({
        type: "error",
        code: "unknown_peer",
        message: `Cannot reach peer "${peerId}": it is not registered in group "${session.group}"`,
      });
      return undefined;
    }
    return peer;
  }

  async #connect(session: PeerSession, peerId: string): Promise<void> {
    const peer = this.#peer(session, peerId);
    if (!peer) return;
    const now = this.#o.clock.now();
    const pair = [session.workerId, peerId].sort().join("\n");
    const previous = this.#introductions.get(pair);
    // The other side asked too, or the pair's last introductions led nowhere.
    if (previous && now - previous.at < introductionWait(previous)) {
      this.stats.introductionsDeferred++;
      return;
    }
    // Bounded: past 10,000 pairs, those past the longest wait go (at most every 10 s).
    if (this.#introductions.size > 10_000 && now - this.#prunedAt >= 10_000) {
      this.#prunedAt = now;
      for (const [key, value] of this.#introductions) {
        if (now - value.at >= MAX_INTRODUCTION_BACKOFF_MS) this.#introductions.delete(key);
      }
    }
    // Claimed before the first await, so a simultaneous connect from the
    // other side (handled in its own session's queue) sees it.
    const sessionId = randomHex(8);
    const failed = previous && !previous.direct ? previous.failed + 1 : 0;
    const entry: PairIntroduction = { at: now, sessionId, failed };
    this.#introductions.set(pair, entry);
    // Two instances of a fleet may each take one side's `connect`: only one
    // introduction may go out, or each side could end on a different session.
    const claim = this.#o.claimIntroduction;
    if (claim && !(await claim(pair, sessionId, INTRODUCTION_DEDUP_MS))) return;
    const [own, other] = await Promise.all([
      this.#o.registry.get(session.workerId),
      this.#o.registry.get(peerId),
    ]);
    if (!own || !other) return;
    const key = randomBase64(32);
    this.stats.introductions++;
    // Both punches leave now; each side waits out the difference of one-way
    // delays so the first probes cross (DCUtR's RTT/2 synchronisation).
    const oneWay = (s: PeerSession) => (s.rttMs ?? 0) / 2;
    const start = Math.max(oneWay(session), oneWay(peer)) + START_MARGIN_MS;
    const punch = (
      to: PeerSession,
      about: WorkerRecord,
      self: WorkerRecord,
      role: PunchMessage["role"],
    ): PunchMessage => ({
      type: "punch",
      peer_id: about.worker_id,
      session_id: sessionId,
      key,
      candidates: candidates(about),
      peer_nat: (about.udp_endpoint?.nat_mapping ?? null) as NatMapping | null,
      own_nat: (self.udp_endpoint?.nat_mapping ?? null) as NatMapping | null,
      role,
      delay_ms: Math.round(start - oneWay(to)),
    });
    session.send(punch(session, other, own, "initiator"));
    peer.send(punch(peer, own, other, "responder"));
    this.#o.logger.info("peers introduced", {
      worker_id: session.workerId,
      peer_id: peerId,
      session_id: sessionId,
      nat: `${own.udp_endpoint?.nat_mapping ?? "none"}/${
        other.udp_endpoint?.nat_mapping ?? "none"
      }`,
    });
  }

  /**
   * Carries one transport packet to a peer of the same group. Packets are
   * dropped, never queued without bound, and never answered with an error:
   * the transport above (QUIC) treats a drop as loss and slows down.
   */
  relayPacket(session: PeerSession, frame: RelayFrame): void {
    const peer = this.#o.sessionOf(frame.peerId);
    if (
      peer === undefined || peer.group !== session.group || peer === session ||
      !session.takeRelayBytes(this.#o.clock.now(), frame.packet.length) ||
      !peer.sendBinary(encodeRelayFrame(session.workerId, frame.packet))
    ) {
      this.stats.packetsDropped++;
      return;
    }
    this.stats.packetsRelayed++;
    this.stats.relayBytes += frame.packet.length;
  }

  #relay(session: PeerSession, to: string, data: string): void {
    if (!session.takeRelay(this.#o.clock.now())) {
      this.stats.relayRejected++;
      session.send({ type: "error", code: "rate_limited", message: "Relay rate limit exceeded" });
      return;
    }
    const peer = this.#peer(session, to);
    if (!peer) return;
    if (!peer.sendDroppable({ type: "relayed", from: session.workerId, data })) {
      this.stats.relayDropped++; // the peer does not read: no error, as for packets
      return;
    }
    this.stats.relayed++;
    this.stats.relayBytes += data.length;
  }
}
