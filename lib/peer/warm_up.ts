/**
 * The transport's warm-up: at start, a worker dials its own listener once,
 * through a stand-in that loops back, the whole way a peer connection goes
 * (the handshake, a signed proof on a stream, its check and the answer).
 * The first connection in a process pays for compiling and initialising all
 * of that (about 20 ms here, of the 30 a first `connect` took); paid at
 * start, a worker's first `connect` is as quick as its later ones. The layer
 * above then rehearses its own part on the same connection (a stream, a
 * datagram). Nothing leaves loopback.
 *
 * @module
 */

import { settleWithin } from "../core/clock.ts";
import {
  fromBase64Url,
  type Identity,
  toBase64Url,
  verifySignature,
} from "../protocol/identity.ts";
import type { FfiUdp } from "./ffi_udp.ts";
import { StandIn } from "./stand_in.ts";
import {
  dialerPayload,
  frameMessage,
  readMessage,
  restOfStreams,
  within,
} from "./transport_auth.ts";

/**
 * The stand-in of the warm-up dial: not a worker id (ids are never empty),
 * so no peer's packets can reach it.
 */
export const WARM_UP = "";
/** How long the warm-up dial may take before it is given up. */
const WARM_UP_TIMEOUT_MS = 5000;
/** QUIC's "no error" close code. */
const NORMAL = 0;

/** What the warm-up dial needs of its transport. */
export interface WarmUpDial {
  endpoint: Deno.QuicEndpoint;
  alpn: string;
  workerId: string;
  identity: Identity;
  certHash: string;
  congestionControl?: Deno.ConnectQuicOptions<false>["congestionControl"];
  /** The transport's stand-ins by port: the loop's is registered as {@linkcode WARM_UP}. */
  byPort: Map<number, string>;
  /** Batched sockets, when the stand-ins use them (the warm-up takes the same path). */
  ffi?: FfiUdp;
}

/** One end of the warm-up's loop connection, as the layer above takes a peer's. */
export interface LoopEnd {
  /** The connection. */
  conn: Deno.QuicConn;
  /** Streams the other end opens (the proof stream taken out). */
  incoming: ReadableStream<Deno.QuicBidirectionalStream>;
}

/** Both ends of the loop connection, once its proof went through. */
export interface LoopEnds {
  /** Our dial's end. */
  dialer: LoopEnd;
  /** Our listener's end. */
  listener: LoopEnd;
}

/**
 * The warm-up of one transport: the dial through a loop stand-in, and its
 * answer on our listener. Once the proof went through, the loop connection
 * stays open for the layer above to rehearse on ({@linkcode WarmUp.ends}) —
 * its streams and datagrams are code a first connection would otherwise
 * compile — until it calls {@linkcode WarmUp.release}, or
 * `WARM_UP_TIMEOUT_MS` passes, or the transport closes.
 */
export class WarmUp {
  /** Resolves with whether the dial went through (a failure costs only speed). */
  readonly dialed: Promise<boolean>;
  /** Resolves with both ends of the loop connection (null when the dial failed). */
  readonly ends: Promise<LoopEnds | null>;
  /** Resolves once the loop connection is closed. */
  readonly finished: Promise<void>;
  /** Why the dial failed, or undefined once it went through. */
  readonly failure: Promise<Error | undefined>;
  readonly #d: WarmUpDial;
  readonly #listener = Promise.withResolvers<LoopEnd>();
  readonly #released = Promise.withResolvers<void>();
  #loop: StandIn | undefined;
  #conns: Deno.QuicConn[] = [];

  constructor(d: WarmUpDial) {
    this.#d = d;
    const ends = this.#dial();
    this.ends = ends.then((e) => e, () => null);
    this.dialed = this.ends.then((e) => e !== null);
    this.finished = ends.then(
      () => settleWithin(this.#released.promise, WARM_UP_TIMEOUT_MS),
      () => {},
    ).finally(() => this.#close());
    this.failure = ends.then(() => undefined, (error: unknown) => error as Error);
    this.#listener.promise.catch(() => {});
  }

  /** The rehearsal is over (or was never wanted): the loop connection closes. */
  release(): void {
    this.#released.resolve();
  }

  async #dial(): Promise<LoopEnds> {
    const d = this.#d;
    const loopStats = { packetsSent: 0, bytesSent: 0, packetsReceived: 0, bytesReceived: 0 };
    const loop: StandIn = new StandIn(
      WARM_UP,
      d.endpoint.addr,
      loopStats,
      (packet) => loop.deliver(packet.subarray(1)),
      d.ffi,
    );
    this.#loop = loop;
    d.byPort.set(loop.port, WARM_UP);
    const connecting = Deno.connectQuic({
      endpoint: d.endpoint,
      hostname: "127.0.0.1",
      port: loop.port,
      alpnProtocols: [d.alpn],
      serverCertificateHashes: [{
        algorithm: "sha-256",
        value: fromBase64Url(d.certHash, "certificate hash"),
      }],
      congestionControl: d.congestionControl ?? "default",
      maxIdleTimeout: WARM_UP_TIMEOUT_MS,
    } as Deno.ConnectQuicOptions<false>);
    connecting.then((c) => this.#conns.push(c), () => {});
    const conn = await within(connecting, WARM_UP_TIMEOUT_MS, "warm-up handshake");
    const control = await conn.createBidirectionalStream();
    const writer = control.writable.getWriter();
    const payload = dialerPayload(d.workerId, d.workerId, d.certHash);
    const signature = toBase64Url(await d.identity.sign(payload));
    await writer.write(frameMessage({ worker_id: d.workerId, signature }));
    const reader = control.readable.getReader();
    await within(readMessage(reader), WARM_UP_TIMEOUT_MS, "warm-up answer");
    reader.releaseLock();
    writer.releaseLock();
    const listener = await within(this.#listener.promise, WARM_UP_TIMEOUT_MS, "warm-up listener");
    return { dialer: { conn, incoming: conn.incomingBidirectionalStreams }, listener };
  }

  /** The listener's side: checks the proof, answers, and hands its end on. */
  async answer(conn: Deno.QuicConn): Promise<void> {
    const d = this.#d;
    this.#conns.push(conn);
    try {
      const streams = conn.incomingBidirectionalStreams.getReader();
      const first = await within(streams.read(), WARM_UP_TIMEOUT_MS, "warm-up stream");
      if (first.done) return;
      const reader = first.value.readable.getReader();
      const proof = await readMessage(reader);
      const payload = dialerPayload(d.workerId, d.workerId, d.certHash);
      const ok = typeof proof.signature === "string" &&
        await verifySignature(d.identity.publicKey, payload, proof.signature);
      const writer = first.value.writable.getWriter();
      await writer.write(frameMessage({ ok }));
      reader.releaseLock();
      writer.releaseLock();
      if (!ok) throw new Error("warm-up proof refused");
      this.#listener.resolve({ conn, incoming: restOfStreams(streams) });
    } catch (error) {
      this.#listener.reject(error);
      conn.close({ closeCode: NORMAL, reason: "" });
    }
  }

  #close(): void {
    for (const conn of this.#conns) conn.close({ closeCode: NORMAL, reason: "" });
    this.#conns = [];
    if (this.#loop) {
      this.#d.byPort.delete(this.#loop.port);
      this.#loop.close();
    }
  }
}
