/**
 * A worker's sockets for punching beyond its main ones — the hard side's
 * extra sockets and rerolls' fresh sockets, from one bounded pool — and the
 * one pace every link's punching packets take. The peer manager owns one;
 * links see it through their dependencies.
 *
 * @module
 */

import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import { TokenBucket } from "../core/rate_limit.ts";
import { StunClient } from "../stun/client.ts";
import { DISCOVERY_SCHEDULE, hostInterfaces, localCandidates } from "../stun/discovery.ts";
import type { Candidate, UdpAddress } from "../protocol/messages.ts";
import { UdpEndpoint } from "./udp_endpoint.ts";

/**
 * The worker's extra sockets (hard-side rounds and rerolls), at most, and
 * those of them only rerolls may take: four hard-side rounds' worth. A
 * round takes sockets only once its peer is live (its authenticated
 * `opened` came), so members that only ask for introductions hold none; a
 * member that does speak the protocol, or many, hold at most these 512.
 */
export const EXTRA_SOCKETS = { max: 512, rerollReserve: 8 } as const;

/**
 * Punching packets (checks, sprays, openings) a worker sends a second, all
 * links together, and at once: one easy-side spray (500 a second) beside
 * dozens of rounds of checks (20 a second each) fits; 500 introductions at
 * once get their checks in turn instead of a backlog of sealing that grows
 * without bound (RFC 8445 §14: one Ta for every check list of an agent).
 */
export const PUNCH_PACE = { perSecond: 2000, burst: 1000 } as const;

/** Options for {@linkcode PunchSockets}. */
export interface PunchSocketsOptions {
  /** The main sockets (socket 0 of each family); without `udp`, no extra sockets. */
  udp?: UdpEndpoint;
  udp6?: UdpEndpoint;
  /** Extra sockets at most. @default {EXTRA_SOCKETS.max} */
  max?: number;
  /** STUN servers a reroll's socket asks for its public candidate. */
  stunServers?: readonly string[];
  clock: Clock;
  logger: Logger;
  /** What an extra socket receives: peer frames, and transport packets. */
  onOther(bytes: Uint8Array, from: UdpAddress, via: number): void;
  onTransport(bytes: Uint8Array, from: UdpAddress, via: number): Promise<unknown> | undefined;
}

/** The worker's extra sockets and its punching pace. */
export class PunchSockets {
  /** Punching packets skipped over {@linkcode PUNCH_PACE}. */
  pacedOut = 0;
  #o: PunchSocketsOptions;
  #sockets = new Map<number, UdpEndpoint>();
  #nextVia = 1;
  #pace: TokenBucket;

  constructor(options: PunchSocketsOptions) {
    this.#o = options;
    this.#pace = new TokenBucket(PUNCH_PACE.perSecond, PUNCH_PACE.burst, options.clock.now());
  }

  /** Extra sockets open now. */
  get size(): number {
    return this.#sockets.size;
  }

  /** Whether one more punching packet may go now (counted in `pacedOut` if not). */
  pace(): boolean {
    if (this.#pace.take(this.#o.clock.now())) return true;
    this.pacedOut++;
    return false;
  }

  /** The socket `via` names for a packet to `to` (0: the main one of `to`'s family). */
  socket(via: number, to: UdpAddress): UdpEndpoint | undefined {
    if (via !== 0) return this.#sockets.get(via);
    // Only a dual-stack worker looks at the address (this runs per packet).
    const udp6 = this.#o.udp6;
    return udp6 && to.ip.includes(":") ? udp6 : this.#o.udp;
  }

  /** Opens up to `count` extra sockets, leaving `reserve` of the pool free; their `via`s. */
  open(count: number, reserve = 0): number[] {
    const main = this.#o.udp;
    if (!main) return [];
    const room = (this.#o.max ?? EXTRA_SOCKETS.max) - reserve - this.#sockets.size;
    const vias: number[] = [];
    for (let i = 0; i < Math.min(count, room); i++) {
      let socket: UdpEndpoint;
      try {
        socket = UdpEndpoint.bind({ hostname: main.local.ip, port: 0, ffi: main.ffi });
      } catch (error) {
        this.#o.logger.warn("cannot open more udp sockets", { opened: i, error });
        break;
      }
      const via = this.#nextVia++;
      socket.onOther = (bytes, from) => this.#o.onOther(bytes, from, via);
      socket.onTransport = (bytes, from) => this.#o.onTransport(bytes, from, via);
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
  async openReroll(): Promise<{ via: number; candidates: Candidate[] } | null> {
    const [via] = this.open(1);
    const socket = via === undefined ? undefined : this.#sockets.get(via);
    if (via === undefined || !socket) return null;
    const stun = new StunClient((bytes, to) => socket.send(bytes, to), {
      family: socket.local.family,
      ...DISCOVERY_SCHEDULE,
      clock: this.#o.clock,
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

  /** Closes extra sockets `vias`. */
  close(vias: number[]): void {
    for (const via of vias) {
      const socket = this.#sockets.get(via);
      this.#sockets.delete(via);
      void socket?.close();
    }
  }

  /** Closes every extra socket. */
  async closeAll(): Promise<void> {
    await Promise.all([...this.#sockets.values()].map((s) => s.close()));
    this.#sockets.clear();
  }
}
