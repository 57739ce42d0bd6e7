/**
 * A peer's stand-in: a loopback UDP socket that is the peer's address as
 * far as QUIC knows. What QUIC sends it is carried to the peer over the
 * link's path; what arrives from the peer is handed to QUIC from it.
 *
 * @module
 */

import { EarlyPackets } from "./early_packets.ts";
import type { FfiUdp, FfiUdpSocket } from "./ffi_udp.ts";
import type { TransportStats } from "./transport.ts";
import { TRANSPORT_MAGIC } from "./udp_endpoint.ts";

/** Receive loops per stand-in: enough to keep QUIC busy, few enough to stay cheap. */
const STAND_IN_LOOPS = 8;
/** Largest datagram QUIC sends (its MTU discovery stays below this on every path we use). */
export const MAX_PACKET = 2048;

/**
 * A peer's stand-in: a loopback socket that is the peer's address to QUIC.
 * With batched sockets (`ffi`), what QUIC sends is handed to `out` in a
 * buffer reused right after, so `out` must copy or send at once (the relay
 * frames it, a batched socket copies; the peer manager copies for Deno's).
 */
export class StandIn {
  readonly peerId: string;
  readonly port: number;
  #conn?: Deno.DatagramConn;
  #socket?: FfiUdpSocket;
  #quic: Deno.NetAddr;
  #closed = false;
  /** When a packet last went through (`performance.now()`), either way. */
  lastActive = performance.now();
  /** Transport bytes to the peer and from it, through this stand-in. */
  readonly bytes = { sent: 0, received: 0 };

  readonly #stats: TransportStats;

  constructor(
    peerId: string,
    quic: Deno.NetAddr,
    stats: TransportStats,
    out: (packet: Uint8Array) => unknown,
    ffi?: FfiUdp,
  ) {
    this.#stats = stats;
    this.peerId = peerId;
    this.#quic = { transport: "udp", hostname: quic.hostname, port: quic.port } as Deno.NetAddr;
    if (ffi) {
      const socket = this.#socket = ffi.bind("127.0.0.1", 0, { headroom: 1 });
      this.port = socket.port;
      socket.onPacket = (packet) => {
        packet[0] = TRANSPORT_MAGIC;
        const size = packet.length - 1;
        this.#stats.packetsSent++;
        this.#stats.bytesSent += size;
        this.bytes.sent += size;
        this.lastActive = performance.now();
        out(packet);
      };
      return;
    }
    this.#conn = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    this.port = (this.#conn.addr as Deno.NetAddr).port;
    for (let i = 0; i < STAND_IN_LOOPS; i++) void this.#loop(this.#conn, out);
  }

  /**
   * Reads what QUIC sends the peer, into a buffer of this loop's own, one
   * byte in so the envelope needs no copy, and waits until it is sent
   * before reusing the buffer.
   */
  async #loop(conn: Deno.DatagramConn, out: (packet: Uint8Array) => unknown): Promise<void> {
    const buffer = new Uint8Array(MAX_PACKET + 1);
    buffer[0] = TRANSPORT_MAGIC;
    const body = buffer.subarray(1);
    while (!this.#closed) {
      let size: number;
      try {
        const [data] = await conn.receive(body);
        size = data.length;
      } catch {
        if (this.#closed) return;
        continue;
      }
      this.#stats.packetsSent++;
      this.#stats.bytesSent += size;
      this.bytes.sent += size;
      this.lastActive = performance.now();
      try {
        await out(buffer.subarray(0, size + 1));
      } catch {
        // A lost packet: QUIC recovers.
      }
    }
  }

  /** Hands a packet from the peer to QUIC; `packet` may be reused once the promise settles (batched: at once). */
  deliver(packet: Uint8Array): Promise<unknown> | undefined {
    this.#stats.packetsReceived++;
    this.#stats.bytesReceived += packet.length;
    this.bytes.received += packet.length;
    this.lastActive = performance.now();
    if (this.#socket) {
      this.#socket.send(packet, this.#quic.hostname, this.#quic.port);
      return undefined;
    }
    return this.#conn!.send(packet, this.#quic).catch(() => {});
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#socket?.close();
      this.#conn?.close();
    } catch {
      // Already closed.
    }
  }
}

/** How stand-ins are made: their limits, and batched sockets to open them with. */
export type StandInOptions = Partial<StandInLimits> & {
  /** Batched sockets (`ffi_udp.ts`); unset: Deno's own. */
  ffi?: FfiUdp;
};

/** How many stand-ins a worker keeps, and for how long. */
export interface StandInLimits {
  /** Stand-ins at once. */
  max: number;
  /**
   * Of them, opened by a peer's packets and not yet carrying an
   * authenticated connection: a group member relaying Initials (or many
   * of them) holds at most this many sockets.
   */
  maxUnproven: number;
  /** A stand-in no packet went through for this long is closed. */
  idleMs: number;
  /** An unproven stand-in is closed this long after it opened (a handshake and its proof take less). */
  unprovenMs: number;
}

/**
 * The defaults. A live connection sends keepalives every 5 s and times out
 * after 30 s idle, so nothing of it is left after 2 idle minutes; the
 * peer's next packet opens a new stand-in. An unproven one lives 15 s: the
 * handshake's 5 s and the dialer's proof's 10 s.
 */
export const STAND_IN_LIMITS: Readonly<StandInLimits> = {
  max: 1024,
  maxUnproven: 32,
  idleMs: 120_000,
  unprovenMs: 15_000,
};

/** One stand-in and what the set knows of it. */
interface Held {
  standIn: StandIn;
  openedAt: number;
  /** An authenticated connection went through it (either way). */
  proven: boolean;
  /** Our dials through it in flight (never swept meanwhile). */
  dialing: number;
}

/**
 * The worker's stand-ins, one per peer, within {@linkcode StandInLimits}:
 * opened for our dials and, within `maxUnproven`, for packets of peers the
 * transport admits; swept when idle or, unproven, when too old.
 */
export class StandIns {
  /** Peers by stand-in port (the warm-up's loop registers itself here too). */
  readonly byPort = new Map<number, string>();
  /** Packets of named peers that came before their introduction (no stand-in for them yet). */
  readonly early = new EarlyPackets();
  #held = new Map<string, Held>();
  #quic: Deno.NetAddr;
  #stats: TransportStats;
  #send: (peerId: string, packet: Uint8Array) => unknown;
  #limits: Readonly<StandInLimits>;
  #sweep: ReturnType<typeof setInterval>;
  /** The batched sockets stand-ins are opened with, if any. */
  readonly ffi: FfiUdp | undefined;

  constructor(
    quic: Deno.NetAddr,
    stats: TransportStats,
    send: (peerId: string, packet: Uint8Array) => unknown,
    limits: StandInOptions = {},
  ) {
    this.ffi = limits.ffi;
    this.#quic = quic;
    this.#stats = stats;
    this.#send = send;
    this.#limits = { ...STAND_IN_LIMITS, ...limits };
    const every = Math.min(this.#limits.idleMs, this.#limits.unprovenMs) / 4;
    this.#sweep = setInterval(() => this.sweep(), Math.max(10, Math.min(every, 1000)));
  }

  /** Stand-ins open now. */
  get size(): number {
    return this.#held.size;
  }

  /** Stand-ins open now that no authenticated connection went through yet. */
  get unproven(): number {
    let n = 0;
    for (const held of this.#held.values()) if (!held.proven) n++;
    return n;
  }

  /** `peerId`'s stand-in, if it has one. */
  get(peerId: string): StandIn | undefined {
    return this.#held.get(peerId)?.standIn;
  }

  /**
   * The stand-in for a packet from `peerId`: its own, or a new one while
   * both caps allow (undefined: the packet is refused).
   */
  admit(peerId: string): StandIn | undefined {
    const held = this.#held.get(peerId);
    if (held) return held.standIn;
    if (this.#held.size >= this.#limits.max || this.unproven >= this.#limits.maxUnproven) {
      return undefined;
    }
    return this.#open(peerId).standIn;
  }

  /**
   * The stand-in for our dial to `peerId` (ours to choose: only the total
   * cap applies), held until `done` is called.
   *
   * @throws {RangeError} when `max` stand-ins are open.
   */
  dial(peerId: string): { standIn: StandIn; done: (ok: boolean) => void } {
    let held = this.#held.get(peerId);
    if (!held) {
      if (this.#held.size >= this.#limits.max) {
        throw new RangeError(`Cannot dial ${peerId}: ${this.#limits.max} peers are connected`);
      }
      held = this.#open(peerId);
    }
    const h = held;
    h.dialing++;
    let once = false;
    return {
      standIn: h.standIn,
      done: (ok) => {
        if (once) return;
        once = true;
        h.dialing--;
        if (ok) h.proven = true;
      },
    };
  }

  /** An authenticated connection from `peerId` came through its stand-in. */
  proven(peerId: string): void {
    const held = this.#held.get(peerId);
    if (held) held.proven = true;
  }

  /** Closes `peerId`'s stand-in (its connection has timed out or closed). */
  forget(peerId: string): void {
    this.early.take(peerId);
    const held = this.#held.get(peerId);
    if (!held) return;
    held.standIn.close();
    this.#held.delete(peerId);
    this.byPort.delete(held.standIn.port);
  }

  /** Closes the idle stand-ins, and the unproven ones past their time. */
  sweep(now = performance.now()): void {
    const { idleMs, unprovenMs } = this.#limits;
    for (const [peerId, held] of this.#held) {
      if (held.dialing > 0) continue;
      const idle = now - held.standIn.lastActive > idleMs;
      if (idle || (!held.proven && now - held.openedAt > unprovenMs)) this.forget(peerId);
    }
  }

  /** Closes them all. */
  close(): void {
    clearInterval(this.#sweep);
    for (const held of this.#held.values()) held.standIn.close();
    this.#held.clear();
  }

  #open(peerId: string): Held {
    const standIn = new StandIn(
      peerId,
      this.#quic,
      this.#stats,
      (p) => this.#send(peerId, p),
      this.ffi,
    );
    const held = { standIn, openedAt: performance.now(), proven: false, dialing: 0 };
    this.#held.set(peerId, held);
    this.byPort.set(standIn.port, peerId);
    return held;
  }
}
