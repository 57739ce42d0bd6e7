/**
 * One UDP socket shared by everything a worker sends and receives over UDP:
 * STUN now, hole-punch probes next. Packets are told apart by STUN's magic
 * cookie (RFC 7983 §7), the way Tailscale's magicsock does with `stun.Is`.
 *
 * @module
 */

import { isStun, toTransportAddress, type TransportAddress } from "../stun/codec.ts";

/** Receives datagrams of one kind. */
export type DatagramHandler = (bytes: Uint8Array, from: TransportAddress) => void;

/**
 * Receives transport packets. `bytes` is a view into a receive buffer that
 * is reused once the returned promise settles (or at once, for no promise):
 * keep what you need before then.
 */
export type PacketHandler = (
  bytes: Uint8Array,
  from: TransportAddress,
) => Promise<unknown> | undefined | void;

/** First byte of a transport (QUIC) packet; see `transport.ts`. */
const TRANSPORT_MAGIC = 0x51;
/** Receive loops per socket: transport packets keep several in flight. */
const RECEIVE_LOOPS = 8;
/** Large enough for any datagram a peer or STUN server sends us. */
const RECEIVE_BUFFER = 4096;

/** Options for {@linkcode UdpEndpoint.bind}. */
export interface UdpBindOptions {
  /** @default {"0.0.0.0"} */
  hostname?: string;
  /** 0 picks a free port. @default {0} */
  port?: number;
}

/**
 * A bound UDP socket with a receive loop that dispatches STUN and other
 * datagrams to their handlers.
 *
 * @example
 * ```ts
 * const udp = UdpEndpoint.bind({ port: 0 });
 * udp.onStun = (bytes, from) => stunClient.handle(bytes, from);
 * await udp.send(bytes, { family: 4, ip: "192.0.2.1", port: 3478 });
 * ```
 */
export class UdpEndpoint {
  readonly local: TransportAddress;
  onStun: DatagramHandler = () => {};
  onOther: DatagramHandler = () => {};
  /** Packets whose first byte is the transport's (0x51): the hot path. */
  onTransport: PacketHandler = () => {};
  #conn: Deno.DatagramConn;
  #closed = false;
  #loop: Promise<unknown>;

  private constructor(conn: Deno.DatagramConn) {
    this.#conn = conn;
    this.local = toTransportAddress(conn.addr as Deno.NetAddr)!;
    this.#loop = Promise.all(Array.from({ length: RECEIVE_LOOPS }, () => this.#receive()));
  }

  /** Binds a socket (needs `--allow-net` and `--unstable-net`). */
  static bind(options: UdpBindOptions = {}): UdpEndpoint {
    return new UdpEndpoint(Deno.listenDatagram({
      transport: "udp",
      hostname: options.hostname ?? "0.0.0.0",
      port: options.port ?? 0,
    }));
  }

  /** Sends one datagram; errors (unreachable, no route) reject. */
  async send(bytes: Uint8Array, to: { ip: string; port: number }): Promise<void> {
    await this.#conn.send(bytes, { transport: "udp", hostname: to.ip, port: to.port });
  }

  /**
   * One receive loop, with a buffer of its own: allocating one per datagram
   * cost more than everything else on the transport's path.
   */
  async #receive(): Promise<void> {
    const buffer = new Uint8Array(RECEIVE_BUFFER);
    while (!this.#closed) {
      let bytes: Uint8Array;
      let addr: Deno.NetAddr;
      try {
        const [data, from] = await this.#conn.receive(buffer);
        bytes = data;
        addr = from as Deno.NetAddr;
      } catch {
        if (this.#closed) return;
        continue; // ICMP errors surface here, one packet at a time.
      }
      const from = toTransportAddress(addr);
      if (from === null) continue;
      try {
        if (bytes[0] === TRANSPORT_MAGIC) await this.onTransport(bytes, from);
        // STUN and peer frames are few and their handlers keep them: a copy each.
        else (isStun(bytes) ? this.onStun : this.onOther)(bytes.slice(), from);
      } catch {
        // A handler's bug must not stop the socket.
      }
    }
  }

  /** Closes the socket and ends the receive loop. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
    await this.#loop;
  }
}
