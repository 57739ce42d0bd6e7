/**
 * A peer's stand-in: a loopback UDP socket that is the peer's address as
 * far as QUIC knows. What QUIC sends it is carried to the peer over the
 * link's path; what arrives from the peer is handed to QUIC from it.
 *
 * @module
 */

import type { TransportStats } from "./transport.ts";
import { TRANSPORT_MAGIC } from "./udp_endpoint.ts";

/** Receive loops per stand-in: enough to keep QUIC busy, few enough to stay cheap. */
const STAND_IN_LOOPS = 8;
/** Largest datagram QUIC sends (its MTU discovery stays below this on every path we use). */
export const MAX_PACKET = 2048;

/** A peer's stand-in: a loopback socket that is the peer's address to QUIC. */
export class StandIn {
  readonly peerId: string;
  readonly port: number;
  #conn: Deno.DatagramConn;
  #quic: Deno.NetAddr;
  #closed = false;
  /** When a packet last went through (`performance.now()`), either way. */
  lastActive = performance.now();

  readonly #stats: TransportStats;

  constructor(
    peerId: string,
    quic: Deno.NetAddr,
    stats: TransportStats,
    out: (packet: Uint8Array) => unknown,
  ) {
    this.#stats = stats;
    this.peerId = peerId;
    this.#quic = { transport: "udp", hostname: quic.hostname, port: quic.port } as Deno.NetAddr;
    this.#conn = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    this.port = (this.#conn.addr as Deno.NetAddr).port;
    for (let i = 0; i < STAND_IN_LOOPS; i++) void this.#loop(out);
  }

  /**
   * Reads what QUIC sends the peer, into a buffer of this loop's own, one
   * byte in so the envelope needs no copy, and waits until it is sent
   * before reusing the buffer.
   */
  async #loop(out: (packet: Uint8Array) => unknown): Promise<void> {
    const buffer = new Uint8Array(MAX_PACKET + 1);
    buffer[0] = TRANSPORT_MAGIC;
    const body = buffer.subarray(1);
    while (!this.#closed) {
      let size: number;
      try {
        const [data] = await this.#conn.receive(body);
        size = data.length;
      } catch {
        if (this.#closed) return;
        continue;
      }
      this.#stats.packetsSent++;
      this.#stats.bytesSent += size;
      this.lastActive = performance.now();
      try {
        await out(buffer.subarray(0, size + 1));
      } catch {
        // A lost packet: QUIC recovers.
      }
    }
  }

  /** Hands a packet from the peer to QUIC. */
  deliver(packet: Uint8Array): Promise<unknown> {
    this.#stats.packetsReceived++;
    this.#stats.bytesReceived += packet.length;
    this.lastActive = performance.now();
    return this.#conn.send(packet, this.#quic).catch(() => {});
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
  }
}
