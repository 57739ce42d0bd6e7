/**
 * One UDP socket shared by everything a worker sends and receives over UDP:
 * STUN now, hole-punch probes next. Packets are told apart by STUN's magic
 * cookie (RFC 7983 §7), the way Tailscale's magicsock does with `stun.Is`.
 *
 * @module
 */

import dgram from "node:dgram";
import { isStun } from "../stun/codec.ts";
import { type FfiUdp, FfiUdpSocket } from "./ffi_udp.ts";
import { toTransportAddress, type TransportAddress } from "../stun/attributes.ts";

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
) => Promise<unknown> | undefined;

/**
 * First byte of a transport (QUIC) packet on the shared UDP socket (STUN's
 * is 0–3, peer frames' 0x48): the socket hands those to the transport.
 */
export const TRANSPORT_MAGIC = 0x51;
/** Receive loops per socket: transport packets keep several in flight. */
const RECEIVE_LOOPS = 8;
/** Large enough for any datagram a peer or STUN server sends us. */
const RECEIVE_BUFFER = 4096;
/**
 * `node:dgram` sockets open at once for opening packets, process-wide: each
 * is one more descriptor for as long as it lives, and a hard-side round
 * sends from a hundred sockets at once.
 */
const OPENERS_AT_ONCE = 8;
let openers = 0;
const openerWaiters: (() => void)[] = [];

/** Runs `fn` once one of the {@linkcode OPENERS_AT_ONCE} slots is free. */
async function withOpenerSlot<T>(fn: () => Promise<T>): Promise<T> {
  if (openers >= OPENERS_AT_ONCE) {
    await new Promise<void>((resolve) => openerWaiters.push(resolve));
  } else {
    openers++;
  }
  try {
    return await fn();
  } finally {
    const next = openerWaiters.shift();
    if (next) next(); // the slot passes on
    else openers--;
  }
}

/** Options for {@linkcode UdpEndpoint.bind}. */
export interface UdpBindOptions {
  /** @default {"0.0.0.0"} */
  hostname?: string;
  /** 0 picks a free port. @default {0} */
  port?: number;
  /**
   * Batched sockets through FFI (`ffi_udp.ts`): an IPv4 socket is opened
   * there instead of with `Deno.listenDatagram` (IPv6 stays Deno's).
   */
  ffi?: FfiUdp;
}

const SENT: Promise<void> = Promise.resolve();

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
  /**
   * The batched sockets this one belongs to, or undefined for Deno's own.
   * A batched socket hands each datagram over once, in a buffer reused right
   * after (whatever a handler returns); its sends copy at once.
   */
  readonly ffi: FfiUdp | undefined;
  #conn?: Deno.DatagramConn;
  #socket?: FfiUdpSocket;
  #closed = false;
  #loop: Promise<unknown>;

  private constructor(conn: Deno.DatagramConn | FfiUdpSocket, ffi?: FfiUdp) {
    if (conn instanceof FfiUdpSocket) {
      this.#socket = conn;
      this.ffi = ffi;
      this.local = { family: 4, ip: conn.ip, port: conn.port };
      conn.onPacket = (bytes, from) => {
        try {
          // Per datagram: a promise (and its catch) only where a handler returned one.
          this.#dispatch(bytes, from)?.catch(() => {});
        } catch {
          // A handler's bug must not stop the socket.
        }
      };
      this.#loop = SENT;
      return;
    }
    this.#conn = conn;
    this.local = toTransportAddress(conn.addr as Deno.NetAddr)!;
    this.#loop = Promise.all(Array.from({ length: RECEIVE_LOOPS }, () => this.#receive()));
  }

  /** Binds a socket (needs `--allow-net` and `--unstable-net`; `--allow-ffi` for `ffi`). */
  static bind(options: UdpBindOptions = {}): UdpEndpoint {
    const hostname = options.hostname ?? "0.0.0.0";
    if (options.ffi && !hostname.includes(":")) {
      const socket = options.ffi.bind(hostname, options.port ?? 0, { reusePort: true });
      return new UdpEndpoint(socket, options.ffi);
    }
    return new UdpEndpoint(Deno.listenDatagram({
      transport: "udp",
      hostname: options.hostname ?? "0.0.0.0",
      port: options.port ?? 0,
      // So that `sendWithTtl` can send from this very port (SO_REUSEPORT:
      // only sockets of this user may share it).
      reuseAddress: true,
    }));
  }

  /**
   * Sends one datagram; errors (unreachable, no route) reject. `bytes` may
   * be reused once the promise settles (a batched socket: at once).
   */
  send(bytes: Uint8Array, to: { ip: string; port: number }): Promise<void> {
    if (this.#socket) {
      return this.#socket.send(bytes, to.ip, to.port)
        ? SENT
        : Promise.reject(new Error(`Cannot send to ${to.ip}:${to.port}`));
    }
    return this.#conn!.send(bytes, { transport: "udp", hostname: to.ip, port: to.port })
      .then(() => {});
  }

  /**
   * The transport's hot path: sends one datagram, a failure being a lost
   * packet (nothing thrown or rejected). Returns what to wait for before
   * `bytes` is reused: nothing for a batched socket, which copied them.
   */
  sendPacket(bytes: Uint8Array, to: { ip: string; port: number }): Promise<unknown> | undefined {
    if (this.#socket) {
      this.#socket.send(bytes, to.ip, to.port);
      return undefined;
    }
    return this.#conn!.send(bytes, { transport: "udp", hostname: to.ip, port: to.port })
      .catch(() => {});
  }

  /** Opening packets waiting for the `node:dgram` socket, and whether it is up. */
  #toOpen: {
    bytes: Uint8Array;
    to: { ip: string; port: number };
    ttl: number;
    done: (sent: boolean) => void;
  }[] = [];
  #opening: Promise<void> | undefined;

  /**
   * Sends `bytes` to `to` from this socket's address and port with IP TTL
   * `ttl` (hop limit): an opening packet of a punch, which makes our NAT's
   * mapping and expires in transit before it reaches the peer's NAT.
   *
   * `Deno.listenDatagram` has no TTL setting, so a `node:dgram` socket is
   * bound beside this one on the same port (SO_REUSEPORT) for as long as
   * opening packets are waiting, then closed; whatever the kernel hands it
   * meanwhile is handled as if this socket had received it. Resolves false
   * when the packet could not be sent (the caller goes on without).
   */
  sendWithTtl(bytes: Uint8Array, to: { ip: string; port: number }, ttl: number): Promise<boolean> {
    if (this.#closed) return Promise.resolve(false);
    // A batched socket sets its own TTL: no second socket needed.
    if (this.#socket) return Promise.resolve(this.#socket.sendWithTtl(bytes, to.ip, to.port, ttl));
    const { promise, resolve } = Promise.withResolvers<boolean>();
    this.#toOpen.push({ bytes, to, ttl, done: resolve });
    this.#opening ??= this.#drainOpenings();
    return promise;
  }

  /** Opens `node:dgram` sockets until no opening packet is left (one may come while one closes). */
  async #drainOpenings(): Promise<void> {
    while (this.#toOpen.length > 0 && !this.#closed) {
      await withOpenerSlot(() => this.#closed ? Promise.resolve() : this.#openerRound());
    }
    for (const waiting of this.#toOpen.splice(0)) waiting.done(false); // closed meanwhile
    this.#opening = undefined;
  }

  async #openerRound(): Promise<void> {
    const opener = dgram.createSocket({
      type: this.local.family === 6 ? "udp6" : "udp4",
      reuseAddr: true,
    });
    opener.on("message", (message: Uint8Array, rinfo: { address: string; port: number }) => {
      const from = toTransportAddress({
        transport: "udp",
        hostname: rinfo.address,
        port: rinfo.port,
      });
      if (!from) return;
      try {
        void Promise.resolve(this.#dispatch(new Uint8Array(message), from)).catch(() => {});
      } catch {
        // A handler's bug must not stop the opener.
      }
    });
    try {
      await new Promise<void>((resolve, reject) => {
        opener.once("error", reject);
        opener.bind({ port: this.local.port, address: this.local.ip }, () => {
          opener.off("error", reject);
          resolve();
        });
      });
      let ttl = -1;
      while (this.#toOpen.length > 0 && !this.#closed) {
        const next = this.#toOpen.shift()!;
        if (next.ttl !== ttl) opener.setTTL(ttl = next.ttl);
        await new Promise<void>((resolve) =>
          opener.send(next.bytes, next.to.port, next.to.ip, (error) => {
            next.done(!error);
            resolve();
          })
        );
      }
    } catch {
      // Cannot bind or set the TTL here: every packet waiting now fails.
      for (const waiting of this.#toOpen.splice(0)) waiting.done(false);
    } finally {
      await new Promise<void>((resolve) => {
        try {
          opener.close(() => resolve());
        } catch {
          resolve();
        }
      });
    }
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
        const [data, from] = await this.#conn!.receive(buffer);
        bytes = data;
        addr = from as Deno.NetAddr;
      } catch {
        if (this.#closed) return;
        continue; // ICMP errors surface here, one packet at a time.
      }
      const from = toTransportAddress(addr);
      if (from === null) continue;
      try {
        await this.#dispatch(bytes, from);
      } catch {
        // A handler's bug must not stop the socket.
      }
    }
  }

  /**
   * Hands a datagram to its handler; returns what to wait for before `bytes`
   * is reused (the hot path: no promise of its own per packet). A handler's
   * error rejects or throws here, for the caller to swallow.
   */
  #dispatch(bytes: Uint8Array, from: TransportAddress): Promise<unknown> | undefined {
    if (bytes[0] === TRANSPORT_MAGIC) return this.onTransport(bytes, from);
    // STUN and peer frames are few and their handlers keep them: a copy each.
    (isStun(bytes) ? this.onStun : this.onOther)(bytes.slice(), from);
  }

  /** Closes the socket and ends the receive loop. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // At once, not after the opening packets queued for an opener slot: the
    // socket's descriptor goes now (an opener already bound ends after its
    // current packet).
    for (const waiting of this.#toOpen.splice(0)) waiting.done(false);
    try {
      this.#socket?.close();
      this.#conn?.close();
    } catch {
      // Already closed.
    }
    await this.#opening;
    await this.#loop;
  }
}
