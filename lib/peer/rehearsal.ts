/**
 * The connections' part of the warm-up: on the transport's loop connection
 * (our own dial of our own listener, see `warm_up.ts`), both ends are made
 * peer connections and carry what a first connection carries — a stream
 * with its header and a byte each way, a datagram each way, the adoption's
 * log line. A fresh process compiles that code here, at start, instead of
 * on an application's first `connect()` (about 10 ms of a first byte here).
 * Nothing leaves loopback; nothing is counted or given to the application.
 *
 * @module
 */

import type { Logger } from "../core/log.ts";
import { within } from "./transport_auth.ts";
import { type PathInfo, PeerConnection } from "./connection.ts";
import type { PeerTransport } from "./transport.ts";

/** How long the rehearsal may take before it is given up. */
const REHEARSAL_TIMEOUT_MS = 5000;
/** The loop is always relayed, as a first connection is. */
const LOOP_PATH: PathInfo = { path: "relay", rttMs: null };

/**
 * Rehearses a connection on `transport`'s loop, then closes it. Resolves
 * with whether it went through; a failure costs only speed, and is logged
 * at debug level.
 */
export async function rehearse(transport: PeerTransport, logger: Logger): Promise<boolean> {
  const ends = await transport.loop();
  if (ends === null) return false;
  try {
    const dialer = new PeerConnection(
      "",
      { ...ends.dialer, dialedBy: "us" },
      () => LOOP_PATH,
      (request) => void request.refuse("rehearsal"),
    );
    const listener = new PeerConnection(
      "",
      { ...ends.listener, dialedBy: "peer" },
      () => LOOP_PATH,
      (request) => void request.refuse("rehearsal"),
    );
    await within(exchange(dialer, listener), REHEARSAL_TIMEOUT_MS, "the rehearsal");
    logger.debug("peer connection rehearsed", { dialed_by: dialer.dialedBy, path: dialer.path });
    return true;
  } catch (error) {
    logger.debug("peer connection rehearsal failed", { error: (error as Error).message });
    return false;
  } finally {
    transport.loopDone();
  }
}

/** A stream opened by `a`, a byte each way, then a datagram each way. */
async function exchange(a: PeerConnection, b: PeerConnection): Promise<void> {
  const answered = (async () => {
    const reader = b.incomingStreams.getReader();
    const { value: stream } = await reader.read();
    reader.releaseLock();
    if (!stream) throw new Error("no stream came");
    for await (const _ of stream.readable) { /* the byte */ }
    const writer = stream.writable.getWriter();
    await writer.write(new Uint8Array([1]));
    await writer.close();
  })();
  const stream = await a.openStream();
  const writer = stream.writable.getWriter();
  await writer.write(new Uint8Array([1]));
  await writer.close();
  let got = 0;
  for await (const chunk of stream.readable) got += chunk.length;
  await answered;
  if (got !== 1) throw new Error(`the stream carried ${got} bytes back, not 1`);
  const back = b.readDatagram().then((d) => b.sendDatagram(d));
  await a.sendDatagram(new Uint8Array([1]));
  await back;
  await a.readDatagram();
}
