/**
 * The transport's warm-up: at start, a worker dials its own listener once,
 * through a stand-in that loops back, the whole way a peer connection goes
 * (the handshake, a signed proof on a stream, its check and the answer).
 * The first connection in a process pays for compiling and initialising all
 * of that (about 20 ms here, of the 30 a first `connect` took); paid at
 * start, a worker's first `connect` is as quick as its later ones. Nothing
 * leaves loopback.
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
import { dialerPayload, frameMessage, readMessage, within } from "./transport_auth.ts";

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

/** Dials our own listener once, the whole way; throws when it does not go through. */
export async function warmUp(d: WarmUpDial): Promise<void> {
  const loopStats = { packetsSent: 0, bytesSent: 0, packetsReceived: 0, bytesReceived: 0 };
  const loop: StandIn = new StandIn(
    WARM_UP,
    d.endpoint.addr,
    loopStats,
    (packet) => loop.deliver(packet.subarray(1)),
    d.ffi,
  );
  d.byPort.set(loop.port, WARM_UP);
  let conn: Deno.QuicConn | undefined;
  try {
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
    conn = await within(connecting, WARM_UP_TIMEOUT_MS, "warm-up handshake");
    const control = await conn.createBidirectionalStream();
    const writer = control.writable.getWriter();
    const payload = dialerPayload(d.workerId, d.workerId, d.certHash);
    const signature = toBase64Url(await d.identity.sign(payload));
    await writer.write(frameMessage({ worker_id: d.workerId, signature }));
    await within(readMessage(control.readable.getReader()), WARM_UP_TIMEOUT_MS, "warm-up answer");
  } finally {
    conn?.close({ closeCode: NORMAL, reason: "" });
    d.byPort.delete(loop.port);
    loop.close();
  }
}

/** The listener's side of the warm-up: checks the proof and answers. */
export async function answerWarmUp(
  conn: Deno.QuicConn,
  workerId: string,
  identity: Identity,
  certHash: string,
): Promise<void> {
  try {
    const first = await within(
      conn.incomingBidirectionalStreams.getReader().read(),
      WARM_UP_TIMEOUT_MS,
      "warm-up stream",
    );
    if (first.done) return;
    const proof = await readMessage(first.value.readable.getReader());
    const payload = dialerPayload(workerId, workerId, certHash);
    const ok = typeof proof.signature === "string" &&
      await verifySignature(identity.publicKey, payload, proof.signature);
    const writer = first.value.writable.getWriter();
    await writer.write(frameMessage({ ok }));
    await settleWithin(conn.closed, WARM_UP_TIMEOUT_MS);
  } catch {
    // Only a warm-up.
  } finally {
    conn.close({ closeCode: NORMAL, reason: "" });
  }
}
