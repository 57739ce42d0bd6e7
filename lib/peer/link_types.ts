/**
 * What a peer link needs from its surroundings (sockets, the relay, the
 * rendezvous, a clock) and what it counts.
 *
 * @module
 */

import type { Clock } from "../core/clock.ts";
import type { Candidate, PathKind, UdpAddress } from "../protocol/messages.ts";
import type { LinkEvent } from "./link_events.ts";

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
  /** An authenticated frame came from `from` over UDP: it answers. */
  heard?(from: UdpAddress): void;
  /**
   * Whether one more punching packet may go now (the worker paces all its
   * links' checks, sprays and openings together, as ICE's Ta paces every
   * check list of an agent). @default {() => true}
   */
  pace?(): boolean;
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
  /** A datagram from the peer (each at most once). */
  onMessage(payload: Uint8Array, path: PathKind): void;
  /** The path changed. */
  onPath(path: PathKind, rttMs: number | null): void;
  /** The validated paths ({@linkcode PeerLink.validatedPaths}) changed. */
  onPaths?(): void;
  /** Events in order, for logs and tests. */
  trace?(event: LinkEvent): void;
  /** @default {Math.random} */
  random?: () => number;
  /** Whether our gateway mapped our socket now (a port mapping). @default {() => false} */
  ownMapped?(): boolean;
}

/** Counters and timings, for the health endpoint and the lab. */
export interface LinkStats {
  sent: { direct: number; relay: number };
  received: { direct: number; relay: number };
  /** Datagrams dropped: replayed or too old, or pushed out of the queue before the introduction. */
  dropped: number;
  /** Clock times: when the first punch arrived, the first relayed frame left, the path went direct. */
  punchAt: number | null;
  firstRelayAt: number | null;
  directAt: number | null;
  /** Punches that needed more than one attempt before going direct. */
  punchAttempts: number;
  /** Rounds rerolled (fresh sockets), over all introductions. */
  rerolls: number;
}
